"""What several `herald` command groups share: the `--data-dir` option and the settings of
the stack it points at."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ops.demo import StackInfo

DEFAULT_DATA_DIR = Path(".herald")

# HERALD_DATA_DIR too, as the settings read it: the flag wins, then the variable.
DataDir = Annotated[
    Path, typer.Option(envvar="HERALD_DATA_DIR", help="Where the local stack keeps its state.")
]


def stack_settings(data_dir: Path):
    """HERALD_* settings; the local stack's Redis when no HERALD_REDIS_URL is set.

    So `herald dlq` and `herald import` work against what `make run` started with no
    environment at all, while an explicit HERALD_REDIS_URL still wins."""
    # Imported here, not at the top: pydantic-settings costs `herald --help` a third more.
    from cluster.settings import HeraldSettings

    info = StackInfo.load(data_dir)
    if "HERALD_REDIS_URL" not in os.environ and info is not None:
        return HeraldSettings(redis_url=info.redis_url)
    return HeraldSettings()
