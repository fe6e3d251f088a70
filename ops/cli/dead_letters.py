"""`herald dlq`: look at and replay the dead-letter stream of the stack in `--data-dir`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir, stack_settings

app = typer.Typer(help="The dead-letter stream: deliveries and events that gave up.")


@app.command("list")
def dlq_list(
    count: Annotated[int, typer.Option(help="Most entries to show.")] = 50,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Dead letters, oldest first: id, kind, reason, and what it was."""
    # Imported here: the Redis stores cost `herald --help` more than the rest of it.
    from cluster.state.dead_letters import list_dead_letters

    entries = list_dead_letters(stack_settings(data_dir), count)
    for entry in entries:
        typer.echo(f"{entry['id']}  {entry['kind']:<8} {entry['reason']}")
        typer.echo(f"    {json.dumps(entry['body'])[:200]}")
    typer.echo(f"{len(entries)} dead letter(s)", err=True)


@app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Entry ids; all when none.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Send dead letters again: deliveries with a fresh attempt budget, events to their lane."""
    # Imported here: the Redis stores cost `herald --help` more than the rest of it.
    from cluster.state.dead_letters import replay_dead_letters

    n = replay_dead_letters(stack_settings(data_dir), ids or None)
    typer.echo(f"replayed {n} dead letter(s)")
