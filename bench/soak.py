"""Soak: order updates at a steady rate for a long time while live streams keep opening
and closing; does anything grow, is anything lost?

    python bench/soak.py --minutes 20 --rate 190 --sockets 2000 --lifetime 30

Every user has one phone and the inbox (as `bench/transactional.py`); the first
`--sockets` of them also hold a live stream (`bench/stream.py`'s holders, in processes of
their own), each closed after about `--lifetime` seconds (0.5–1.5×) and opened again, so
the count stays bounded while connections churn. Every `--sample` seconds the RSS of every
process of the stack (by Ray actor name, plus Redis and the emulators) and Redis's client
count are recorded. At the end: every accepted notification's push must be final and
delivered, and each series is compared between the first sample after warm-up and the
last. Results go to bench/results/soak.json and are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil
import redis
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu_groups, stream, transactional  # noqa: E402
from cluster.state.clients import sync_client  # noqa: E402
from ops.importer import import_devices  # noqa: E402
from ops.local import LocalStack  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "soak.json"


def rss_by_process() -> dict[str, float]:
    """MiB of RSS per process of this run, named by its group and pid order (a restarted
    actor shows up as a new name, which the comparison reports as such)."""
    named: dict[str, float] = {}
    counts: dict[str, int] = defaultdict(int)
    for proc in sorted(psutil.process_iter(), key=lambda p: p.pid):
        group = cpu_groups._group_of(proc)
        if group is None or group.startswith("benchmark"):
            continue
        with contextlib.suppress(psutil.Error):
            counts[group] += 1
            named[f"{group} #{counts[group]}"] = proc.memory_info().rss / 2**20
    return named


class Sampler(threading.Thread):
    """RSS of every process and Redis's client count, every `every_s` seconds."""

    def __init__(self, client: redis.Redis, every_s: float) -> None:
        super().__init__(daemon=True)
        self.redis = client
        self.every_s = every_s
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.is_set():
            self.samples.append(
                {
                    "t_s": round(time.monotonic() - started),
                    "redis_clients": len(self.redis.client_list()),
                    "rss_mib": rss_by_process(),
                }
            )
            self.done.wait(self.every_s)


def drift(samples: list[dict], warmup_s: float) -> dict:
    """Each series' first value after warm-up, last value and change in %; processes seen
    at only one end are listed apart (a restart, or a replica added)."""
    settled = [s for s in samples if s["t_s"] >= warmup_s] or samples
    first, last = settled[0], settled[-1]

    def change(a: float, b: float) -> float:
        return round(100 * (b - a) / a, 1) if a else 0.0

    rss = {
        name: {"first": round(mib, 1), "last": round(last["rss_mib"][name], 1),
               "change_pct": change(mib, last["rss_mib"][name])}
        for name, mib in first["rss_mib"].items() if name in last["rss_mib"]
    }  # fmt: skip
    only = sorted(set(first["rss_mib"]) ^ set(last["rss_mib"]))
    clients = {
        "first": first["redis_clients"],
        "last": last["redis_clients"],
        "max": max(s["redis_clients"] for s in settled),
        "change_pct": change(first["redis_clients"], last["redis_clients"]),
    }
    # Redis grows with what it stores (statuses, inboxes): listed, not judged with the actors.
    judged = {name: v for name, v in rss.items() if not name.startswith("redis")}
    worst = max(judged.items(), key=lambda kv: abs(kv[1]["change_pct"]), default=(None, {}))
    return {"rss": rss, "processes_at_one_end_only": only, "redis_clients": clients,
            "worst_rss": {"process": worst[0], **worst[1]}}  # fmt: skip


def main(
    minutes: float = typer.Option(20, help="How long to post."),
    rate: float = typer.Option(190, help="Pushes per second (half the held rate)."),
    users: int = typer.Option(20_000, help="Users (one phone each)."),
    sockets: int = typer.Option(2000, help="Live streams held, churning."),
    lifetime: float = typer.Option(30, help="Mean seconds a stream lives before reopening."),
    sample: float = typer.Option(30, help="Seconds between two samples."),
    warmup: float = typer.Option(120, help="Seconds before the comparison's first sample."),
    replicas: int = typer.Option(1, help="Fixed ingress replicas."),
) -> None:
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(data_dir=tmp, http_port=None, num_cpus=2, shards=2, routers=2,
                   user_token_secret=stream.SECRET) as stack,
    ):  # fmt: skip
        stream.deploy(stack, replicas)
        ids = [f"bench-{i}" for i in range(users)]  # stream users are among them
        import_devices(stack.settings, transactional.phones(ids))
        while httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code != 200:
            time.sleep(0.5)
        url = stack.stream_url + "/v1/me/stream"
        procs = max(1, -(-sockets // 5000))
        holders = stream.start_holders(url, ids[:sockets], 200, procs, 7200, lifetime)
        sampler = Sampler(sync_client(stack.settings), sample)
        sampler.start()
        accepted, errors = asyncio.run(
            transactional.post_steadily(stack.api_url, stack.api_key, ids, rate, minutes * 60, 100)
        )
        sampler.done.set()
        sampler.join()
        live = holders.stop()
        pushes = transactional.collect(stack.settings, accepted, 600)
    delivered = sum(p["status"] == "delivered" for p in pushes)
    result = {
        "date": started_at,
        "command": command,
        "accepted": len(accepted),
        "pushes_delivered": delivered,
        "lost": len(accepted) - delivered,
        "http_errors": errors,
        "streams": {
            "held_at_start": holders.held,
            **holders.ended,
            "live_messages": len(live),
        },  # fmt: skip
        **drift(sampler.samples, warmup),
        "samples": sampler.samples,
        "machine": transactional.machine(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("samples", "rss")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    typer.run(main)
