"""`herald run` (what `make run` starts) keeps the README's promises: it prints the API, its
key, both emulators and three curl commands that work as printed, and Ctrl-C stops every
process it started.

Runs the real command in a subprocess with its own Ray (not the session stack of
conftest.py), talks to it only through what it printed, then sends it SIGINT.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from ops.demo import wait_final
from ops.processes import free_port

START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 90
RAY_LINE = re.compile(r"^(\x1b\[\d+m)?\((raylet|pid=\d+|\w+ pid=\d+)")
NAMED_LINES = ("API", "API key", "APNs emulator", "FCM emulator", "Live streams")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(START_TIMEOUT_S + STOP_TIMEOUT_S + 120)]


def _herald() -> list[str]:
    script = Path(sys.executable).parent / "herald"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _read_banner(process: subprocess.Popen, lines: queue.Queue, seen: list[str], log: Path):
    """The five `Name: value` lines, then `Try:` and the three curl commands."""
    named: dict[str, str] = {}
    curls: list[str] = []
    tried = False
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (len(named) == len(NAMED_LINES) and tried and len(curls) == 3):
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > deadline:
            pytest.fail(
                f"`herald run` did not print its banner within {START_TIMEOUT_S} s "
                f"(exit code {process.poll()}).\nstdout so far:\n"
                + "\n".join(seen)
                + f"\nstderr tail:\n{_tail(log)}"
            )
        if not line or RAY_LINE.match(line):
            continue  # Ray's own messages to the driver (e.g. the raylet's worker warning)
        seen.append(line)
        name, sep, value = line.partition(": ")
        if not tried and sep and name in NAMED_LINES:
            named[name] = value
        elif line == "Try:":
            tried = True
        elif tried and line.startswith("curl "):
            curls.append(line)
    # One per line, in the README's order.
    assert [line.partition(": ")[0] for line in seen[:5]] == list(NAMED_LINES), seen
    return named, curls


def _tail(log: Path, chars: int = 6000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no stderr log)"


def _as_request(curl: str) -> tuple[str, str, dict[str, str], str | None]:
    """A printed `curl ...` command as (method, url, headers, body), the way curl reads it."""
    words = shlex.split(curl)
    assert words[0] == "curl", curl
    headers: dict[str, str] = {}
    url = body = None
    method = None
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-H", "--header"):
            name, _, value = words[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 2
        elif word in ("-d", "--data", "--data-raw"):
            body = words[i + 1]
            i += 2
        elif word in ("-X", "--request"):
            method = words[i + 1]
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            url = word
            i += 1
    assert url is not None, curl
    return method or ("POST" if body is not None else "GET"), url, headers, body


def _send(client: httpx.Client, request: tuple[str, str, dict[str, str], str | None]):
    method, url, headers, body = request
    return client.request(method, url, headers=headers, content=body)


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


class _Recorder:
    """Every descendant of `pid` seen while it runs, sampled twice a second: a process
    whose parent exits is reparented and can no longer be found from `pid`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> dict[int, psutil.Process]:
        for pid, process in _descendants(self.pid).items():
            self.seen.setdefault(pid, process)
        return dict(self.seen)

    def stop(self) -> dict[int, psutil.Process]:
        self._stop.set()
        self._thread.join()
        return dict(self.seen)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:160]}"
    except psutil.Error:
        return f"{process.pid} (gone)"


def _assert_secrets_are_the_owners(data_dir: Path) -> None:
    """What `herald run` wrote that holds a secret is 0600, the data dir and Redis's 0700."""
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "redis").stat().st_mode & 0o777 == 0o700
    secrets = [
        data_dir / "stack.json",  # the admin key
        data_dir / "pki" / "server.key",
        data_dir / "pki" / "fcm-service-account.json",
        *(data_dir / "pki").glob("AuthKey_*.p8"),
        *[p for p in (data_dir / "redis").rglob("*") if p.is_file()],  # AOF, password
        *data_dir.glob("data-keys.json"),
    ]
    assert len(secrets) >= 7, secrets
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in secrets if p.stat().st_mode & 0o077}
    assert not loose, loose


def test_herald_run_prints_working_commands_and_ctrl_c_stops_everything(tmp_path: Path):
    data_dir = tmp_path / "herald"
    log = tmp_path / "herald-run.stderr"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    # Port and data dir from the environment, as every other setting (the flags win too).
    port, stream_port = free_port(), free_port()
    env["HERALD_HTTP_PORT"], env["HERALD_DATA_DIR"] = str(port), str(data_dir)
    env["HERALD_STREAM_PORT"] = str(stream_port)
    command = _herald() + ["run", "--no-dashboard", "--shards", "2"]
    seen: list[str] = []
    started = time.monotonic()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    recorder = _Recorder(process.pid)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        named, curls = _read_banner(process, lines, seen, log)
        banner_s = time.monotonic() - started
        api_url, api_key = named["API"], named["API key"]
        apns_url, fcm_url = named["APNs emulator"], named["FCM emulator"]
        assert api_url == f"http://127.0.0.1:{port}", named
        assert named["Live streams"] == f"ws://127.0.0.1:{stream_port}/v1/me/stream", named
        _assert_secrets_are_the_owners(data_dir)
        assert apns_url.startswith("https://127.0.0.1:"), named
        assert fcm_url.startswith("https://127.0.0.1:"), named
        ca_file = data_dir / "pki" / "ca.pem"
        assert ca_file.exists()

        # The printed commands, as a user would paste them (httpx in place of curl).
        requests = [_as_request(curl) for curl in curls]
        assert [url.removeprefix(api_url) for _, url, _, _ in requests[:2]] == [
            "/v1/devices",
            "/v1/events",
        ], curls
        assert all(h.get("Authorization") == f"Bearer {api_key}" for _, _, h, _ in requests)
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{api_url}/healthz").status_code == 200
            device = _send(client, requests[0])
            assert device.status_code in (200, 201), device.text
            token = json.loads(requests[0][3])["token"]
            events = _send(client, requests[1])
            assert events.status_code == 202, events.text
            (event_id,) = events.json()["accepted"]
            method, status_url, headers, _ = requests[2]
            assert status_url == f"{api_url}/v1/notifications/{event_id}", curls
            with httpx.Client(base_url=api_url, headers=headers, timeout=30) as api:
                final = wait_final(api, [event_id], timeout_s=60)[event_id]
            assert final.get("state") == "delivered", final
            # The third curl command shows the same thing.
            assert client.request(method, status_url, headers=headers).json()["state"] == (
                "delivered"
            )

        # The local stack verifies user tokens out of the box: `herald run` kept a secret in
        # the data dir (0600) and `herald token mint` signs with it.
        secret_file = data_dir / "user-token-secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        mint_env = {k: v for k, v in env.items() if not k.startswith("HERALD_USER_TOKEN")}
        minted = subprocess.run(
            [*_herald(), "token", "mint", "u1", "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=mint_env, timeout=60, check=True,
        )  # fmt: skip
        user = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        assert httpx.get(f"{api_url}/v1/me/inbox", headers=user).json()["unread"] >= 1
        # The printed stream URL takes the same token: the gateway says hello with the count.
        protocols = ["herald.v1", f"bearer.{minted.stdout.strip()}"]
        with connect(named["Live streams"], subprotocols=protocols) as ws:
            hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "subscribed" and hello["unread"] >= 1, hello

        with httpx.Client(base_url=apns_url, verify=str(ca_file), http2=True, timeout=30) as apns:
            answer = apns.get("/_emulator/received")
            assert answer.status_code == 200 and answer.http_version == "HTTP/2"
            assert token in [item.get("token") for item in answer.json()["received"]]
        with httpx.Client(base_url=fcm_url, verify=str(ca_file), http2=True, timeout=30) as fcm:
            assert fcm.get("/_emulator/stats").status_code == 200

        # Everything `herald run` started, recorded late so Ray's workers are there too.
        recorder.sample()
        time.sleep(1)
        descendants = recorder.sample()
        names = {p.pid: _describe(p) for p in descendants.values()}
        needed = ("raylet", "gcs_server", "redis-server", "emulators apns", "emulators fcm")
        workers = ("ray::ServeController", "ray::ServeReplica", "ray::UserShard")
        workers += ("ray::StreamGateway",)
        for part in needed + workers:
            assert any(part in name for name in names.values()), (part, names)

        stopping = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`herald run` ignored Ctrl-C for {STOP_TIMEOUT_S} s:\n{_tail(log)}")
        stop_s = time.monotonic() - stopping
        # Includes anything started during shutdown, too.
        descendants = recorder.stop()
        stderr_text = log.read_text(errors="replace")
        assert code == 0, f"exit code {code} after Ctrl-C:\n{_tail(log)}"
        assert "Traceback" not in stderr_text, _tail(log)

        deadline = time.monotonic() + 15
        left = [p for p in descendants.values() if _alive(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = [p for p in left if _alive(p)]
        assert not left, "left behind after Ctrl-C:\n" + "\n".join(map(_describe, left))
        print(
            f"\nherald run: banner after {banner_s:.0f} s, {len(descendants)} processes, "
            f"stopped {stop_s:.0f} s after Ctrl-C"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for leftover in recorder.stop().values():
            if _alive(leftover):
                try:
                    leftover.kill()
                except psutil.Error:
                    pass
