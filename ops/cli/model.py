"""`herald model`: the ranking model registry on disk (list, show, train, evaluate, deploy,
roll back). No cluster needed; the Serve app picks up what `deploy` points at.

The registry and training modules pull in scikit-learn and polars, so every command imports
them in its body: `herald --help` would otherwise take seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir

app = typer.Typer(
    help="The ranking model registry: list, train, evaluate, deploy, roll back.",
    no_args_is_help=True,
)

ModelDir = Annotated[
    Path | None,
    typer.Option(
        envvar="HERALD_MODEL_DIR",
        help="The model registry directory (default: <data-dir>/models).",
    ),
]

Version = Annotated[str, typer.Argument(help="A registered version.")]

# What the registry raises for an unknown version, a model it refuses, or a bad directory.
REGISTRY_ERRORS = (KeyError, ValueError, OSError)


def _registry(model_dir: Path | None, data_dir: Path):
    """The registry `--model-dir` names, else the local stack's (`<data-dir>/models`)."""
    from models.registry import Registry  # lazy: keeps `herald --help` fast

    return Registry(model_dir if model_dir is not None else data_dir / "models")


@contextmanager
def _refused(*errors: type[BaseException]) -> Iterator[None]:
    """Turn `errors` into one line on stderr and exit status 2: an operator typing a wrong
    version wants the registry's message, not a traceback."""
    caught = errors or REGISTRY_ERRORS
    try:
        yield
    except caught as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.echo(f"error: {message}".splitlines()[0], err=True)
        raise typer.Exit(2) from exc


@app.command("list")
def model_list(model_dir: ModelDir = None, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Registered versions, newest first; `*` marks the deployed one."""
    with _refused():
        versions = _registry(model_dir, data_dir).list()
    for meta in versions:
        metrics = meta.get("metrics") or {}
        auc = metrics.get("holdout_auc")
        auc_text = f"AUC {auc:.4f}  " if isinstance(auc, int | float) else ""
        typer.echo(
            f"{'*' if meta['current'] else ' '} {meta['version']:<22} "
            f"{str(meta.get('registered_at', ''))[:19]:<19}  {auc_text}"
            f"{str(meta.get('trained_on', ''))[:70]}"
        )


@app.command("show")
def model_show(
    version: Version, model_dir: ModelDir = None, data_dir: DataDir = DEFAULT_DATA_DIR
) -> None:
    """A version's metadata (JSON): metrics, training data, feature version, sha256."""
    with _refused():
        meta = _registry(model_dir, data_dir).show(version)
    typer.echo(json.dumps(meta, indent=2, sort_keys=True))


@app.command("deploy")
def model_deploy(
    version: Version,
    require_lift: Annotated[
        bool,
        typer.Option(
            "--require-lift",
            help="Refuse unless the off-policy DR lower bound of opens per send on the last "
            "7 days of logged sends beats the live policy's observed rate.",
        ),
    ] = False,
    feedback: Annotated[
        Path | None,
        typer.Option(envvar="HERALD_FEEDBACK_DIR", help="The feedback log (with --require-lift)."),
    ] = None,
    model_dir: ModelDir = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Point the registry at VERSION after loading it under the feature contract."""
    registry = _registry(model_dir, data_dir)
    if require_lift:
        _require_lift(registry, version, feedback or data_dir / "feedback")
    with _refused():
        previous = registry.deploy(version)
    typer.echo(f"deployed {version} (previous: {previous})")


def _require_lift(registry, version: str, feedback: Path) -> None:
    """Exit 2 with the reason when VERSION is not shown to beat the live policy."""
    from api.models import LIFT_WINDOW_S  # lazy: keeps `herald --help` fast
    from models.off_policy_log import evaluate_candidate, lift_verdict
    from pipelines.feedback_log import logged_sends

    with _refused():
        ranker = registry.load(version)
        rows = logged_sends(feedback, since_s=LIFT_WINDOW_S)
        if rows.height == 0:
            raise ValueError(f"refused: no sends logged in {feedback} over the last 7 days")
        reason = lift_verdict(evaluate_candidate(rows, ranker))
        if reason is not None:
            raise ValueError(f"refused: {reason}")


@app.command("rollback")
def model_rollback(model_dir: ModelDir = None, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Re-deploy the version deployed before the current one."""
    registry = _registry(model_dir, data_dir)
    with _refused():
        previous = registry.rollback()
    typer.echo(f"rolled back to {registry.current()} (previous: {previous})")


def _feedback_rows(feedback: Path | None):
    """The training rows of `--feedback`: the cluster's layout (DIR/sends + DIR/actions)
    joined into one row per send, else a plain feedback log; None trains on simulation."""
    if feedback is None:
        return None
    if (feedback / "sends").is_dir():
        from pipelines.feedback_log import training_rows  # lazy: keeps `herald --help` fast

        return training_rows(feedback)
    from models.training import read_feedback_log  # lazy: keeps `herald --help` fast

    return read_feedback_log(feedback)


@app.command("train")
def model_train(
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="A feedback log: DIR/day=YYYY-MM-DD/*.parquet, or the cluster's feedback "
            "directory (DIR/sends + DIR/actions)."
        ),
    ] = None,
    synth_users: Annotated[
        int | None, typer.Option(min=100, help="Train on simulated feedback of N synthetic users.")
    ] = None,
    register: Annotated[bool, typer.Option(help="Register the model in the registry.")] = False,
    seed_: Annotated[int, typer.Option("--seed", help="Seed of the simulation.")] = 7,
    holdout_share: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Latest share of sends held out.")
    ] = 0.2,
    model_dir: ModelDir = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Train a ranker on a feedback log or on simulated feedback; prints the hold-out
    metrics (time-based split), and with --register adds it to the registry."""
    from models.training import describe, train  # lazy: keeps `herald --help` fast

    if feedback is not None and synth_users is not None:
        typer.echo("error: give --feedback or --synth-users, not both", err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    # Training's own errors are bad input (ValueError) or unreadable files (OSError) only.
    with _refused(ValueError, OSError):
        rows = _feedback_rows(feedback)
        fitted, metrics = train(
            rows, synth_users=synth_users, seed=seed_, holdout_share=holdout_share
        )
    typer.echo(describe(metrics))
    typer.echo(f"took {time.perf_counter() - started:.2f} s")
    if register:
        source = f"feedback log {feedback.resolve()}" if feedback is not None else metrics["source"]
        with _refused():
            version = _registry(model_dir, data_dir).register(
                fitted, metrics=metrics, trained_on=source
            )
        typer.echo(f"registered {version} (deploy it with `herald model deploy {version}`)")


def _duration_s(text: str) -> float:
    """'7d', '24h', '90m' or seconds → seconds (typer.BadParameter otherwise)."""
    units = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 7d, 24h or 3600") from None


@app.command("evaluate")
def model_evaluate(
    version: Annotated[
        str | None, typer.Argument(help="A registered version (default: the deployed one).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write lift / calibration / regret PNGs and JSON here.")
    ] = None,
    users: Annotated[int, typer.Option(min=1_000, help="Size of the fresh population.")] = 50_000,
    off_policy: Annotated[
        bool,
        typer.Option(
            "--off-policy",
            help="Estimate on the logged sends instead (IPS, SNIPS, DR with 95 % intervals) "
            "beside the live policy's observed rate.",
        ),
    ] = False,
    since: Annotated[
        str, typer.Option(help="With --off-policy: the sends of this last period (7d, 24h).")
    ] = "7d",
    feedback: Annotated[
        Path | None,
        typer.Option(
            envvar="HERALD_FEEDBACK_DIR",
            help="With --off-policy: the feedback log (default: <data-dir>/feedback).",
        ),
    ] = None,
    model_dir: ModelDir = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Offline evaluation against the synthetic world's ground truth: precision@k and
    expected clicks vs random / recency / oracle targeting, calibration, bandit regret.
    With --off-policy: what VERSION would have got on the sends the live policy logged."""
    with _refused():
        ranker = _registry(model_dir, data_dir).load(version)
    if off_policy:
        _off_policy(ranker, feedback or data_dir / "feedback", _duration_s(since), out)
        return
    from models.evaluate import describe, evaluate  # lazy: keeps `herald --help` fast

    typer.echo(describe(evaluate(ranker, users=users, out_dir=out)))


def _off_policy(ranker, feedback: Path, since_s: float, out: Path | None) -> None:
    from models.off_policy_log import describe, evaluate_candidate  # lazy, as above
    from pipelines.feedback_log import logged_sends  # lazy, as above

    started = time.perf_counter()
    with _refused(ValueError, OSError):
        rows = logged_sends(feedback, since_s=since_s)
        if rows.height == 0:
            raise ValueError(f"no sends logged in {feedback} over the last {since_s:.0f} s")
        result = evaluate_candidate(rows, ranker)
    typer.echo(describe(result, version=ranker.version))
    typer.echo(f"took {time.perf_counter() - started:.2f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "off_policy.json").write_text(json.dumps(result, indent=1) + "\n")
