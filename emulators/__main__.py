"""`python -m emulators apns|fcm --port 0 --pki-dir DIR`: run one provider emulator.

Prints `READY https://127.0.0.1:<port>` once it listens (the FCM emulator first writes
`DIR/fcm-service-account.json`, whose token_uri points at it) and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from emulators.apns import ApnsEmulator
from emulators.fcm import FcmEmulator, write_service_account
from emulators.h2server import serve
from emulators.pki import make_test_pki


class Kind(StrEnum):
    apns = "apns"
    fcm = "fcm"


def main(
    kind: Annotated[Kind, typer.Argument(help="Which provider to emulate.")],
    pki_dir: Annotated[Path, typer.Option(help="Where test certificates and keys live.")],
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    fcm_project: Annotated[str, typer.Option(help="FCM project id.")] = "herald-demo",
) -> None:
    asyncio.run(_run(kind, pki_dir, port, host, fcm_project))


async def _run(kind: Kind, pki_dir: Path, port: int, host: str, fcm_project: str) -> None:
    pki = make_test_pki(pki_dir)
    holder: dict = {}

    async def handler(request):
        return await holder["emulator"].handle(request)

    server = await serve(handler, host, port, pki.server_cert, pki.server_key)
    actual = server.sockets[0].getsockname()[1]
    url = f"https://{host}:{actual}"
    if kind is Kind.apns:
        holder["emulator"] = ApnsEmulator(
            pki.apns_public_key.read_bytes(), pki.apns_key_id, pki.apns_team_id, pki.directory
        )
    else:
        token_uri = f"{url}/token"
        public = write_service_account(pki.fcm_credentials_file, fcm_project, token_uri)
        holder["emulator"] = FcmEmulator(fcm_project, public, token_uri, pki.directory)
    print(f"READY {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    typer.run(main)
