"""`herald token mint`: a token the app accepts, from the environment's secret or the local
stack's (created 0600 by `herald run`), and a clear exit when there is neither."""

from __future__ import annotations

import stat

from typer.testing import CliRunner

from api.user_tokens import UserTokens
from ops.cli import app
from ops.cli.token import local_secret, stack_token_settings


def test_mint_with_the_local_stacks_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("HERALD_USER_TOKEN_SECRET", raising=False)
    monkeypatch.delenv("HERALD_USER_TOKEN_PUBLIC_KEY", raising=False)
    runner = CliRunner()
    missing = runner.invoke(app, ["token", "mint", "u1", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "herald run" in missing.output

    settings = stack_token_settings(tmp_path)  # what `herald run` does
    secret = settings["user_token_secret"]
    assert stat.S_IMODE((tmp_path / "user-token-secret").stat().st_mode) == 0o600
    assert local_secret(tmp_path) == secret  # created once, then read

    minted = runner.invoke(app, ["token", "mint", "u1", "--data-dir", str(tmp_path)])
    assert minted.exit_code == 0, minted.output
    assert UserTokens(secret, None, "herald").verify(minted.output.strip()) == "u1"


def test_an_environment_secret_wins_and_herald_run_then_adds_none(tmp_path, monkeypatch):
    secret = "e" * 40
    monkeypatch.setenv("HERALD_USER_TOKEN_SECRET", secret)
    assert stack_token_settings(tmp_path) == {}
    minted = CliRunner().invoke(app, ["token", "mint", "u2", "--ttl", "60"])
    assert UserTokens(secret, None, "herald").verify(minted.output.strip()) == "u2"
