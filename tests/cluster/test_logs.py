"""Structured logs: JSON lines with the ids an operator searches by, and never a device
token — neither in Herald's own lines nor anywhere else in the cluster's log files."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from cluster.logs import RedactingJsonFormatter, redact
from ops.demo import apns_token, fcm_token
from tests.cluster.test_dead_letters import wait_for
from tests.cluster.test_e2e import register
from tests.cluster.test_fallback import channels, order


def _json_logger(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger("herald.test-logs")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        RedactingJsonFormatter("{levelname}{name}{message}", style="{", json_ensure_ascii=False)
    )
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


def test_lines_are_json_with_ids_and_no_tokens():
    apns, fcm = apns_token(), fcm_token()
    stream = io.StringIO()
    logger = _json_logger(stream)
    logger.warning(
        "push to %s failed",
        apns,
        extra={"notification_id": "n-1", "event_id": "e-1", "tokens": [fcm], "token": "xyz"},
    )
    try:
        raise RuntimeError(f"provider refused {fcm}")
    except RuntimeError:
        logger.exception("send failed", extra={"notification_id": "n-2"})

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["notification_id"] == "n-1" and first["event_id"] == "e-1"
    assert first["levelname"] == "WARNING"
    assert first["message"] == f"push to {apns[:6]}…[redacted] failed"
    assert first["tokens"] == [f"{fcm[:6]}…[redacted]"]
    assert first["token"] == "[redacted]"  # a field named like a secret, whatever its shape
    assert second["notification_id"] == "n-2" and "RuntimeError" in second["exc_info"]
    assert apns not in stream.getvalue() and fcm not in stream.getvalue()


def test_redact_leaves_ordinary_text_alone():
    text = "user u-1 order o-77 shipped; device d_3f2a notification fb-123:456"
    assert redact(text) == text


def _herald_lines(logs_dir: Path, needle: str) -> list[dict]:
    lines = []
    for path in logs_dir.glob("worker-*"):
        for line in path.read_text(errors="replace").splitlines():
            if needle in line and line.lstrip().startswith("{"):
                lines.append(json.loads(line))
    return lines


@contextmanager
def dead_token(emulators: dict, token: str) -> Iterator[None]:
    """The APNs emulator answers `token` with 410 Unregistered while the block runs."""
    emulators["apns"].post("/_emulator/faults", json={"dead_tokens": [token]})
    try:
        yield
    finally:
        emulators["apns"].post("/_emulator/faults", json={})


def test_cluster_logs_name_the_notification_and_hide_the_token(api, emulators, uid):
    """A dead token is an event an operator looks up by notification id: the router logs it
    as a JSON line with that id, and no log file of any process holds the token itself."""
    user, token = f"lg-{uid}", apns_token()
    register(api, user, "ios", token)
    with dead_token(emulators, token):
        api.post("/v1/events", json={"events": [order(f"lg-{uid}", user)]}).raise_for_status()
        wait_for(lambda: channels(api, f"lg-{uid}").get("apns") == "dead")

    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = wait_for(lambda: _herald_lines(logs_dir, f"lg-{uid}"), timeout_s=30)
    [line] = [x for x in found if x["message"] == "dead tokens deactivated"]
    assert line["notification_ids"] == [f"lg-{uid}"]
    assert line["level"] == "INFO" and line["logger"] == "herald.router"
    leaks = [p.name for p in logs_dir.iterdir() if p.is_file() and token in p.read_text("latin-1")]
    assert leaks == []
