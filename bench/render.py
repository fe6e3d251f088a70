"""Render-stage benchmark: templates rendered per (template, locale) with polars, the way a
router renders a batch of order updates (and a fan-out a campaign batch), against a naive
per-notification Python loop (`str.format` per row) on the same rows.

    python bench/render.py --rows 500 --rows 5000 --rows 100000

Each row is a notification to one device: one of the eleven shipped `order.<status>`
templates, a device locale drawn from en/de/fr/es/pt-BR (no template in pt: it falls back to
the default), a profile locale for a third of the devices without one. Timed: locale
resolution + rendering of every push field. Results go to bench/results/render.json.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transactional import machine, write_result  # noqa: E402
from pipelines.order_updates import ORDER_STATUSES  # noqa: E402
from pipelines.templates import available_locales, defaults, render, resolve_locales  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "render.json"
LOCALES = ["en-US", "de-DE", "fr-FR", "es-ES", "pt-BR", None]


def notifications(rows: int, seed: int = 3) -> pl.DataFrame:
    """A batch of order-update notifications with device and profile locales."""
    rng = np.random.default_rng(seed)
    statuses = np.asarray(ORDER_STATUSES, dtype=object)[rng.integers(0, len(ORDER_STATUSES), rows)]
    device = np.asarray(LOCALES, dtype=object)[rng.integers(0, len(LOCALES), rows)]
    profile = np.where(rng.random(rows) < 0.33, "de-AT", None)
    return pl.DataFrame(
        {
            "template_id": [f"order.{s}" for s in statuses],
            "device_locale": device.tolist(),
            "profile_locale": profile.tolist(),
            "order_id": [f"o{i}" for i in range(rows)],
        }
    ).with_columns(variables=pl.struct("order_id"))


def columnar(frame: pl.DataFrame, templates: dict) -> pl.DataFrame:
    located = frame.with_columns(
        resolve_locales(frame, available_locales(templates), "en").alias("locale")
    )
    return render(located, templates)


def naive(frame: pl.DataFrame, templates: dict) -> list[tuple[str, str]]:
    """One Python step per notification: the loop the columnar path replaces."""
    out = []
    for template_id, device, profile, order_id in frame.select(
        "template_id", "device_locale", "profile_locale", "order_id"
    ).iter_rows():
        template = templates[template_id]
        locale = "en"
        for tag in (device, profile):
            if tag and (tag in template.locales or tag.split("-")[0] in template.locales):
                locale = tag if tag in template.locales else tag.split("-")[0]
                break
        content = template.locales[locale]
        out.append((content.title, content.body.format(order_id=order_id)))
    return out


def best_of(fn, *args, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main(rows: list[int] = typer.Option([500, 5_000, 100_000]), output: Path = RESULTS) -> None:
    templates = defaults()
    runs = []
    for n in rows:
        frame = notifications(n)
        rendered = columnar(frame, templates)
        assert rendered["body"].null_count() == 0, "a notification rendered with a hole"
        fast, slow = best_of(columnar, frame, templates), best_of(naive, frame, templates)
        runs.append(
            {
                "rows": n,
                "columnar_rows_per_s": round(n / fast),
                "columnar_us_per_row": round(fast / n * 1e6, 3),
                "naive_rows_per_s": round(n / slow),
                "speedup": round(slow / fast, 1),
            }
        )
        typer.echo(runs[-1], err=True)
    write_result(
        output,
        {
            "command": "python bench/render.py " + shlex.join(sys.argv[1:]),
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    typer.run(main)
