"""`herald keys`: the data keys that seal device tokens at rest (`cluster.state.sealing`).

Rotating a key, with Herald running throughout:

1. `herald keys new` prints a fresh entry. Add it **last** to `HERALD_DATA_KEYS` of every
   process (API replicas, shards, routers — a rolling restart, or redeploying the Serve
   app): the last key seals new writes, every listed key opens. A process only reads its
   keys when it starts, so a key reaches running actors by their restart, never live.
2. `herald keys rotate` (with the same `HERALD_DATA_KEYS`) re-seals every stored token not
   yet under the newest key, in batches beside the running shards; a row a shard rewrites
   meanwhile is left alone (the shard sealed it under the newest key already). Run it
   again until it reports nothing re-sealed and nothing rewritten meanwhile.
3. Remove the old key from `HERALD_DATA_KEYS` and restart again. Then `BGREWRITEAOF`, so
   the append-only file no longer holds the old ciphertexts (and, on a deployment that
   predates sealing, the tokens it stored in the clear: `rotate` seals those too).

On the local stack (no `HERALD_DATA_KEYS`) the key lives in `<data dir>/data-keys.json`;
adding a new entry last there and restarting the stack is the same procedure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir, stack_settings

app = typer.Typer(help="Data keys sealing device tokens at rest.", no_args_is_help=True)


def keys_settings(data_dir: Path):
    """`stack_settings`; on the local stack without HERALD_DATA_KEYS, with its key file."""
    from ops.demo import StackInfo

    settings = stack_settings(data_dir)
    if not settings.protection.data_keys and StackInfo.load(data_dir) is not None:
        settings = settings.with_overrides(data_dir=Path(data_dir).resolve(), dev_mode=True)
    return settings


def rotate(settings, batch: int = 1_000):
    """Re-seal every shard's device tokens under the newest key; what `herald keys rotate`
    runs. Returns the counts (`cluster.state.shards.Resealed`)."""
    # Imported here: the Redis stores cost `herald --help` more than the rest of it.
    from cluster.state.clients import sync_client
    from cluster.state.shards import reseal_shards

    client = sync_client(settings)
    try:
        return reseal_shards(settings, client, batch)
    finally:
        client.close()


@app.command("new")
def keys_new() -> None:
    """Print a fresh key entry to add, last, to HERALD_DATA_KEYS."""
    from cluster.state.sealing import new_key_entry

    kid, key = new_key_entry()
    typer.echo(json.dumps({kid: key}))
    typer.echo(f'add it last: HERALD_DATA_KEYS=\'{{..., "{kid}": "{key}"}}\'', err=True)


@app.command("rotate")
def keys_rotate(
    batch: Annotated[int, typer.Option(min=1, help="Rows per HSCAN and write.")] = 1_000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Re-seal every stored device token under the newest key, while Herald runs."""
    from cluster.state.sealing import DataKeys

    settings = keys_settings(data_dir)
    newest = DataKeys.from_settings(settings).current
    done = rotate(settings, batch)
    typer.echo(
        f"re-sealed {done.resealed} token(s) under key {newest} ({done.plaintext} of them "
        f"stored unsealed before); {done.current} already on it"
    )
    if done.changed:
        typer.echo(f"{done.changed} rewritten meanwhile and left alone: run it again", err=True)
