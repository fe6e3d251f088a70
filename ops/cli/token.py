"""`herald token mint USER`: an end user's token for `/v1/me/…` on the local stack.

In production the shop's backend mints these for its signed-in users (`api.user_tokens`
says what Herald checks); this command is for trying `/v1/me` and `/demo/inbox` locally.

The secret: `HERALD_USER_TOKEN_SECRET` when set, else the local stack's own, which
`herald run` creates on first start in `<data dir>/user-token-secret` (48 random bytes,
URL-safe base64, file mode 0600, created with O_EXCL so it is never readable by others
even for a moment) and hands to the app — so `/v1/me` works out of the box on a local
stack, and nowhere else without a configured secret.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir

SECRET_FILE = "user-token-secret"

app = typer.Typer(help="End users' tokens for /v1/me (local use).", no_args_is_help=True)


def local_secret(data_dir: Path) -> str:
    """The local stack's user token secret, created (0600) on first use."""
    path = Path(data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def stack_token_settings(data_dir: Path) -> dict[str, str]:
    """What `herald run` adds to the stack's settings: the local secret, unless the
    environment configures user token keys itself."""
    configured = ("HERALD_USER_TOKEN_SECRET", "HERALD_USER_TOKEN_PUBLIC_KEY")
    if any(os.environ.get(name) for name in configured):
        return {}
    return {"user_token_secret": local_secret(data_dir)}


@app.command()
def mint(
    user: Annotated[str, typer.Argument(help="The user id the token is for (its `sub`).")],
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.", min=1)] = 3600,
    kid: Annotated[str | None, typer.Option(help="Key id, with a JSON secret map.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print a signed user token (HS256) for USER, for local use."""
    from api.user_tokens import mint as mint_token  # lazy: keeps `herald --help` fast

    secret = os.environ.get("HERALD_USER_TOKEN_SECRET")
    if not secret:
        path = Path(data_dir) / SECRET_FILE
        if not path.exists():
            typer.echo(
                f"no user token secret: set HERALD_USER_TOKEN_SECRET or start `herald run` "
                f"(it creates {path})",
                err=True,
            )
            raise typer.Exit(2)
        secret = path.read_text().strip()
    audience = os.environ.get("HERALD_USER_TOKEN_AUDIENCE", "herald")
    try:
        typer.echo(mint_token(secret, user, audience, ttl, kid))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
