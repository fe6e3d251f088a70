"""`herald run` takes its port and data directory from HERALD_HTTP_PORT / HERALD_DATA_DIR,
as every other Herald setting, unless the flags say otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app, stack


class Started(Exception):
    """Stands in for the stack: the test stops where `herald run` would start one."""


@pytest.fixture
def started(monkeypatch):
    seen: dict = {}

    def fake_start(data_dir: Path, port: int | None, shards: int, dashboard: bool):
        seen.update(data_dir=data_dir, port=port, shards=shards)
        raise Started

    monkeypatch.setattr(stack, "_start_stack", fake_start)
    for name in ("HERALD_HTTP_PORT", "HERALD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return seen


def _run(args: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, ["run", *args], env=env)
    assert isinstance(result.exception, Started), result.output
    return result


def test_run_defaults(started):
    _run([])
    assert started["port"] == 8000 and started["data_dir"] == Path(".herald")


def test_run_reads_the_environment(started, tmp_path):
    _run([], env={"HERALD_HTTP_PORT": "18123", "HERALD_DATA_DIR": str(tmp_path)})
    assert started["port"] == 18123
    assert started["data_dir"] == tmp_path


def test_flags_win_over_the_environment(started, tmp_path):
    env = {"HERALD_HTTP_PORT": "18123", "HERALD_DATA_DIR": "/nonexistent"}
    _run(["--port", "18999", "--data-dir", str(tmp_path)], env=env)
    assert started["port"] == 18999 and started["data_dir"] == tmp_path


def test_status_finds_the_stack_through_herald_data_dir(tmp_path):
    """The other commands share the option: `herald status` reads the stack.json under
    HERALD_DATA_DIR (a stack that is not running answers "not reachable")."""
    (tmp_path / "stack.json").write_text(
        '{"api_url": "http://127.0.0.1:9", "api_key": "k", "apns_url": "", "fcm_url": "",'
        ' "ca_file": "", "redis_url": ""}'
    )
    result = CliRunner().invoke(app, ["status"], env={"HERALD_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "http://127.0.0.1:9" in result.output
