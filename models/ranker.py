"""Scoring: a linear model over `models.features` giving P(opened) per (user, variant).

A model file is a skops archive (`<name>.skops`) plus its metadata (`<name>.json`:
feature_version, version, sha256 of the archive, metrics, trained_on, created_at).
`load_ranker` refuses, with a ValueError, a file that is not a skops archive, one whose
bytes do not match the recorded sha256, one holding types outside `TRUSTED_TYPES`, and one
trained on another `FEATURE_VERSION`. The shipped default lives in `models/default/` and is
rebuilt by `python -m models.train_default`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from models.features import FEATURE_COLUMNS, FEATURE_VERSION, features, linear_logits

try:  # optional: limits BLAS threads while predicting (no oversubscription inside actors)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
    ThreadpoolController = None

_controller: Any = None


def _thread_limit(threads: int | None) -> Any:
    """A context limiting BLAS / OpenMP pools to `threads`. The controller (a scan of the
    loaded libraries, ≈ 2 ms) is made once, on first use; entering its limit costs ≈ 20 µs."""
    global _controller
    if ThreadpoolController is None or threads is None:
        return nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=threads)


DEFAULT_PATH = Path(__file__).resolve().parent / "default" / "ranker.skops"

# The only types a model archive may hold beyond what skops trusts by default. A linear
# model needs none; anything else found by `get_untrusted_types` is refused.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(path: Path) -> Path:
    """Where the metadata of the model archive at `path` lives."""
    return Path(path).with_suffix(".json")


class Ranker:
    """Scores (user, variant) pairs with one vectorized `predict_proba` call per batch.

    `score` returns P(opened): the probability that the user opens the notification in that
    variant, sent at `now` (the model is trained on opens, not clicks)."""

    target = "opened"

    def __init__(
        self,
        model: Any,
        *,
        version: str,
        feature_version: str = FEATURE_VERSION,
        metadata: dict[str, Any] | None = None,
        threads: int | None = 1,
    ) -> None:
        if feature_version != FEATURE_VERSION:
            raise ValueError(
                f"model features {feature_version!r} != code features {FEATURE_VERSION!r}"
            )
        n_in = getattr(model, "n_features_in_", None)
        if n_in is not None and n_in != len(FEATURE_COLUMNS):
            raise ValueError(
                f"model takes {n_in} features, FEATURE_COLUMNS has {len(FEATURE_COLUMNS)}"
            )
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"{type(model).__name__} has no predict_proba")
        self.model = model
        self.version = version
        self.feature_version = feature_version
        self.metadata = dict(metadata or {})
        self.threads = threads

    def __repr__(self) -> str:
        return f"Ranker(version={self.version!r}, feature_version={self.feature_version!r})"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """P(opened) per row of a `features` matrix, float64."""
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        with _thread_limit(self.threads):
            proba = self.model.predict_proba(matrix)
        positive = list(self.model.classes_).index(1) if 1 in self.model.classes_ else -1
        return np.asarray(proba[:, positive], dtype=np.float64)

    def score(
        self, users: pl.DataFrame, variants: pl.DataFrame, *, category: str | None, now: float
    ) -> np.ndarray:
        """(n_users, n_variants) float64 P(opened) for each user and variant, sent at `now`.

        A binary logistic regression is scored from its coefficients (`linear_logits`): the
        same numbers as `predict_proba` on the feature matrix, without materializing it —
        about 3× faster for three variants, which is most of a campaign's planning time."""
        if _is_binary_logistic(self.model) and users.height and variants.height:
            logits = linear_logits(
                users,
                variants,
                category=category,
                now=now,
                coef=self.model.coef_[0],
                intercept=float(self.model.intercept_[0]),
            )
            return 1.0 / (1.0 + np.exp(-logits))  # P(classes_[1]), as predict_proba[:, 1]
        matrix = features(users, variants, category=category, now=now)
        return self.predict(matrix).reshape(users.height, variants.height)


def _is_binary_logistic(model: Any) -> bool:
    return (
        isinstance(model, LogisticRegression)
        and getattr(model, "coef_", None) is not None
        and model.coef_.shape[0] == 1
        and len(model.classes_) == 2
    )


def save_ranker(model: Any, path: Path, *, metrics: dict, trained_on: str) -> Path:
    """Write `model` (an estimator, or a Ranker) as a skops archive at `path` plus its
    metadata JSON beside it (`metadata_path`); returns `path`."""
    import skops.io as sio  # lazy: ~0.4 s more at import, and scoring never needs it

    if isinstance(model, Ranker):
        model = model.model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, path)
    sha = _sha256(path)
    meta = {
        "feature_version": FEATURE_VERSION,
        "feature_columns": list(FEATURE_COLUMNS),
        "version": f"lr-{FEATURE_VERSION}-{sha[:12]}",
        "sha256": sha,
        "target": Ranker.target,
        "estimator": f"{type(model).__module__}.{type(model).__qualname__}",
        "metrics": metrics,
        "trained_on": trained_on,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    metadata_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_ranker(path: Path | None = None) -> Ranker:
    """Load a model saved by `save_ranker` (None → the shipped default). ValueError for a
    missing / unreadable metadata file, another feature version, a sha256 mismatch, a file
    that is not a skops archive, or untrusted types inside it."""
    import skops.io as sio  # lazy: ~0.4 s more at import, and scoring never needs it

    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(path)
    meta_file = metadata_path(path)
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no readable metadata at {meta_file}: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: metadata is not a JSON object")
    feature_version = meta.get("feature_version")
    if feature_version != FEATURE_VERSION:
        raise ValueError(
            f"{path}: trained on feature_version {feature_version!r}, this code computes "
            f"{FEATURE_VERSION!r}; retrain it (python -m models.train_default)"
        )
    sha = _sha256(path)
    if meta.get("sha256") not in (None, sha):
        raise ValueError(f"{path}: sha256 {sha} does not match its metadata ({meta['sha256']})")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, TypeError) as e:
        raise ValueError(f"{path}: not a skops model archive: {e}") from e
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ValueError(f"{path}: untrusted types in the archive: {refused}")
    try:
        model = sio.load(path, trusted=sorted(set(untrusted)))
    except Exception as e:  # a corrupt archive can fail in many ways
        raise ValueError(f"{path}: cannot load the skops archive: {e}") from e
    version = meta.get("version") or f"lr-{FEATURE_VERSION}-{sha[:12]}"
    return Ranker(model, version=version, feature_version=feature_version, metadata=meta)
