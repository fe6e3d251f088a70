"""`herald synth` and `herald import`: make a synthetic population, and bulk-load one into
the running stack's shards over Ray (no HTTP), for benchmarks and realistic demos.

Both need polars, pyarrow or Ray, which their bodies import: `herald --help` stays fast."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir, stack_settings

TABLES = ("users", "devices", "wishlists")


def synth(
    users: Annotated[int, typer.Option(min=1, help="Number of synthetic users.")] = 100_000,
    seed_: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory to write the Parquet files to.")] = Path(
        "synth"
    ),
) -> None:
    """Write a synthetic population (users, devices, wishlists, products as Parquet) and its
    hidden ground-truth engagement model (ground_truth.json)."""
    from models.synth import synthesize  # lazy: keeps `herald --help` fast

    started = time.perf_counter()
    paths = synthesize(users, seed_, out)
    took = time.perf_counter() - started
    for name in ("users", "devices", "wishlists", "products"):
        path = getattr(paths, name)
        size = path.stat().st_size / 1e6
        typer.echo(f"{name}: {path} ({paths.rows[name]:,} rows, {size:.1f} MB)")
    typer.echo(f"ground truth: {paths.ground_truth}")
    typer.echo(f"took {took:.2f} s")


def import_(
    src: Annotated[Path, typer.Argument(help="A `herald synth` output directory.")],
    address: Annotated[
        str, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster to connect to.")
    ] = "auto",
    shards: Annotated[
        int | None,
        typer.Option(help="Shard count of the running stack (default: counted from Ray)."),
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per shard call.")] = 50_000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Bulk-load users.parquet, devices.parquet and wishlists.parquet (whichever exist) from
    DIR into the running stack's shards, bypassing HTTP; prints rows and rows/s per table."""
    import ray  # lazy: keeps `herald --help` fast

    files = {name: src / f"{name}.parquet" for name in TABLES if (src / f"{name}.parquet").exists()}
    if not files:
        typer.echo(f"no users/devices/wishlists .parquet in {src}", err=True)
        raise typer.Exit(2)
    settings = stack_settings(data_dir)
    _connect(address, settings.topology.namespace)
    try:
        _import_files(settings, files, shards, chunk_rows)
    finally:
        ray.shutdown()


def _connect(address: str, namespace: str) -> None:
    """Join the running Ray cluster, or exit 2 saying why not (the usual cause off-box is
    token auth, which `ray.init` reports only as a refused connection)."""
    import ray  # lazy: keeps `herald --help` fast

    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        hint = "" if address == "auto" else " (token auth on? set RAY_AUTH_MODE=token)"
        typer.echo(f"no running Ray cluster at {address!r}{hint}: {exc}", err=True)
        raise typer.Exit(2) from exc


def _import_files(settings, files: dict[str, Path], shards: int | None, chunk_rows: int) -> None:
    """Load each table in turn, printing its rate. The shard count must match the running
    stack's (rows are routed by it), so it is counted from Ray unless given."""
    # lazy: pyarrow, and polars and Ray behind the importer, would slow `herald --help`
    import pyarrow.parquet as pq

    from ops.importer import import_devices, import_users, import_wishlists, running_shards

    namespace = settings.topology.namespace
    shards = shards or running_shards(namespace)
    if not shards:
        typer.echo(f"no Herald shards in Ray namespace {namespace!r}", err=True)
        raise typer.Exit(2)
    settings = settings.with_overrides(shards=shards)
    total_started = time.perf_counter()
    for name, path in files.items():
        started = time.perf_counter()
        table = pq.read_table(path)
        if name == "wishlists":  # chunked by user: a user's list is replaced in one call
            written = import_wishlists(settings, table, chunk_users=chunk_rows)
        elif name == "devices":
            written = import_devices(settings, table, chunk_rows=chunk_rows)
        else:
            written = import_users(settings, table, chunk_rows=chunk_rows)
        took = time.perf_counter() - started
        rate = written / max(took, 1e-9)
        typer.echo(f"{name}: {written:,} rows in {took:.2f} s ({rate:,.0f} rows/s)")
    typer.echo(f"{shards} shards, took {time.perf_counter() - total_started:.2f} s")
