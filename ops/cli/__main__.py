"""`python -m ops.cli`: the `herald` command where its console script is not installed."""

from ops.cli import app

app()
