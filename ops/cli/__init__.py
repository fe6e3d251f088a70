"""`herald`: run the local stack, run the demo scenario, look at a running cluster.

The console script is `ops.cli:app`. Each command group lives in its own module; this one
only assembles them, in the order `herald --help` lists them.
"""

from __future__ import annotations

import typer

from ops.cli import data, dead_letters, keys, model, stack, token

app = typer.Typer(help="Herald: personalized notification fan-out on Ray.", no_args_is_help=True)

app.command()(stack.run)
app.command()(stack.demo)
app.command()(data.synth)
app.command("import")(data.import_)
app.command()(stack.status)
app.add_typer(dead_letters.app, name="dlq")
app.add_typer(model.app, name="model")
app.add_typer(token.app, name="token")
app.add_typer(keys.app, name="keys")

__all__ = ["app"]
