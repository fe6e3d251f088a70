"""CPU seconds per process group over a benchmark window: where a notification's CPU goes.

Ray names each worker process after the actor it hosts (`ray::UserShard`, `ray::Router`,
`ray::ServeReplica:herald:HeraldIngress`), so summing user + system CPU by that name between
two snapshots splits the bill between Herald's actors, Serve's proxy, Ray itself, Redis and
the provider emulators. Divided by the notifications sent in the window it gives CPU per
notification per group, the number the CPU budget is written in; unlike throughput it
barely moves when other work shares the box.
"""

from __future__ import annotations

import re

import psutil

# (group, pattern over "name cmdline"), first match wins.
_GROUPS = [
    ("ingress (Serve replica)", r"ServeReplica:herald:HeraldIngress"),
    ("serve proxy", r"ProxyActor"),
    ("stream gateway", r"ray::.*StreamGateway"),
    ("serve controller", r"ServeController"),
    ("router", r"ray::.*Router"),
    ("user shard", r"ray::.*UserShard"),
    ("sender", r"ray::.*Sender"),
    ("fan-out worker", r"ray::.*Fanout"),
    ("other Herald actors", r"ray::(?!IDLE)"),
    ("redis", r"redis-server"),
    ("emulators", r"-m emulators"),
    # The benchmark itself: its poster and status collector (the driver, which also hosts
    # Ray's driver side) and any socket-holding processes it spawned.
    ("benchmark (poster, collector, socket holders)", r"bench/\w+\.py|multiprocessing\.spawn"),
    ("raylet / gcs / ray workers idle", r"raylet|gcs_server|ray::IDLE|dashboard|log_monitor"),
]


def _group_of(process: psutil.Process) -> str | None:
    try:
        text = f"{process.name()} {' '.join(process.cmdline())}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for group, pattern in _GROUPS:
        if re.search(pattern, text):
            return group
    return None


def snapshot() -> dict[int, tuple[str, float]]:
    """Every grouped process: pid → (group, user + system CPU seconds so far)."""
    seen: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter():
        group = _group_of(process)
        if group is None:
            continue
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        seen[process.pid] = (group, times.user + times.system)
    return seen


def per_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict:
    """CPU seconds each group spent between two snapshots (a process born in between counts
    from zero; one that died in between is lost, which a steady benchmark does not see)."""
    spent: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        start = before.get(pid, (group, 0.0))[1]
        spent[group] = spent.get(group, 0.0) + max(0.0, cpu - start)
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


def per_notification_us(spent: dict[str, float], notifications: int) -> dict[str, float]:
    """Each group's CPU per notification (µs), with the total of the system under test:
    the benchmark's own group is listed but not in `total` (it is the load, not Herald)."""
    if notifications <= 0:
        return {}
    out = {group: round(seconds * 1e6 / notifications, 1) for group, seconds in spent.items()}
    herald = sum(seconds for group, seconds in spent.items() if not group.startswith("benchmark"))
    out["total"] = round(herald * 1e6 / notifications, 1)
    return out
