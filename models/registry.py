"""The model registry: versioned ranker archives in a directory, and which one is deployed.

Layout of `root` (`HERALD_MODEL_DIR`, by default `<data_dir>/models`)::

    versions/<version>/ranker.skops   the skops archive (`models.ranker.save_ranker`)
    versions/<version>/ranker.json    its metadata: save_ranker's fields (feature_version,
                                      sha256, version, estimator, created_at, ...) plus
                                      metrics, trained_on, data_range, registered_at
    current                           JSON pointer {"version", "previous", "at"}, replaced
                                      atomically (temporary file + os.replace)
    history.jsonl                     append-only deploy log, one JSON object per line:
                                      {"action": bootstrap|deploy|rollback, "version",
                                      "previous", "at"}
    .lock                             fcntl.flock lock taken by every writer

A version is content-addressed: `lr-<feature_version>-<first 12 hex of the archive's
sha256>`, so registering the same bytes twice gives the same version (and changes nothing).
`deploy` and `rollback` load the archive with `models.ranker.load_ranker` (skops trusted
types, feature_version == FEATURE_VERSION, sha256) before moving the pointer; a model that
does not load leaves `current` as it was. A registry where nothing was deployed yet deploys
the shipped default (`models/default`) on first use, so `current()` always has an answer.

Only the pointer changes on deploy / rollback: a running cluster picks the new version up
by reading `current` (hot reload is wired on the cluster side).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.features import FEATURE_VERSION
from models.ranker import (
    DEFAULT_PATH,
    Ranker,
    _sha256,
    load_ranker,
    metadata_path,
    save_ranker,
)

ARCHIVE = "ranker.skops"
METADATA = "ranker.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; readers may be other users' workers
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _stage_archive(model_or_path: Any, archive: Path, *, metrics: dict, trained_on: str) -> dict:
    """Put the model's skops archive at `archive` and return its metadata so far: a file's
    own metadata JSON (or none, then the current feature version is assumed and checked
    when the archive is validated) with its `source`, or what `save_ranker` writes for an
    estimator or a `Ranker`."""
    if not isinstance(model_or_path, str | os.PathLike):
        save_ranker(model_or_path, archive, metrics=metrics, trained_on=trained_on)
        return json.loads(metadata_path(archive).read_text())
    source = Path(model_or_path)
    if not source.is_file():
        raise FileNotFoundError(f"no model archive at {source}")
    shutil.copyfile(source, archive)
    try:
        meta = json.loads(metadata_path(source).read_text())
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    meta.setdefault("feature_version", FEATURE_VERSION)
    meta["source"] = str(source)
    return meta


class Registry:
    """Versioned ranker archives under `root`; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "current"
        self.history_file = self.root / "history.jsonl"
        self._lock_file = self.root / ".lock"

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- locking ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the registry across processes and threads (flock on a
        file opened per call: separate open file descriptions exclude each other)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self._lock_file, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- versions --------------------------------------------------------------------

    def path(self, version: str | None = None) -> Path:
        """The skops archive of `version` (None → the deployed one). KeyError if unknown."""
        version = self.current() if version is None else version
        archive = self.versions_dir / version / ARCHIVE
        if not version or "/" in version or version.startswith(".") or not archive.is_file():
            known = ", ".join(self._versions()) or "none"
            raise KeyError(f"unknown model version {version!r} (registered: {known})")
        return archive

    def _versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / ARCHIVE).is_file()
        )

    def _metadata(self, version: str) -> dict[str, Any]:
        meta_file = self.versions_dir / version / METADATA
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            meta = {"version": version, "error": f"unreadable metadata: {e}"}
        if not isinstance(meta, dict):
            meta = {"version": version, "error": "metadata is not a JSON object"}
        meta["version"] = version
        return meta

    def register(
        self,
        model_or_path: Any,
        *,
        metrics: dict,
        trained_on: str,
        data_range: dict | None = None,
    ) -> str:
        """Add a model (a fitted estimator, a `Ranker`, or the path of a skops archive
        written by `save_ranker`, with or without its metadata JSON beside it) and return
        its version. The archive must load under the feature contract (ValueError
        otherwise). Identical archive bytes → the same version; registering them again
        changes nothing. `data_range` (e.g. the first / last `sent_at` of the training
        data) defaults to `metrics["data_range"]` when present."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            archive = staging / ARCHIVE
            meta = _stage_archive(model_or_path, archive, metrics=metrics, trained_on=trained_on)
            sha = _sha256(archive)
            if meta.get("sha256") not in (None, sha):
                raise ValueError(
                    f"{model_or_path}: sha256 {sha} does not match its metadata ({meta['sha256']})"
                )
            version = f"lr-{meta['feature_version']}-{sha[:12]}"
            meta.update(
                sha256=sha,
                version=version,
                metrics=metrics,
                trained_on=trained_on,
                registered_at=_now(),
            )
            if data_range is None and isinstance(metrics, dict):
                data_range = metrics.get("data_range")
            if data_range is not None:
                meta["data_range"] = data_range
            (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            self._validate(archive, version)  # refuse what could never be deployed
            return self._publish(staging, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, staging: Path, version: str) -> str:
        """Move a complete staging directory into place as `versions/<version>` under the
        lock: one rename, so readers see the whole version or none of it."""
        with self._locked():
            target = self.versions_dir / version
            if (target / ARCHIVE).is_file():
                return version  # the same bytes are already registered
            if target.exists():  # a half-written leftover: replace it
                shutil.rmtree(target)
            os.rename(staging, target)
            return version

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every registered version, newest first, each with `current`."""
        current = self.current()
        metas = [self._metadata(v) for v in self._versions()]
        metas.sort(
            key=lambda m: (str(m.get("registered_at") or m.get("created_at") or ""), m["version"]),
            reverse=True,
        )
        for meta in metas:
            meta["current"] = meta["version"] == current
        return metas

    def show(self, version: str) -> dict[str, Any]:
        """Metadata of `version` with `current` and `path`; KeyError for an unknown one."""
        path = self.path(version)
        meta = self._metadata(version)
        meta["current"] = version == self._read_pointer()
        meta["path"] = str(path)
        return meta

    # --- deployment ------------------------------------------------------------------

    def _read_pointer(self) -> str | None:
        try:
            text = self.pointer.read_text()
        except FileNotFoundError:
            return None
        try:
            version = json.loads(text)["version"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.pointer}: unreadable deploy pointer: {e}") from e
        return str(version)

    def _history(self) -> list[dict[str, Any]]:
        try:
            lines = self.history_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crash mid-append: ignore it
            if isinstance(entry, dict) and entry.get("version"):
                entries.append(entry)
        return entries

    def history(self) -> list[dict[str, Any]]:
        """The deploy log, oldest first."""
        return self._history()

    def _set_current(self, version: str, previous: str | None, action: str) -> None:
        """Move the pointer and log it; the caller holds the lock."""
        at = _now()
        entry = {"action": action, "version": version, "previous": previous, "at": at}
        _write_atomic(self.pointer, json.dumps(entry) + "\n")
        with open(self.history_file, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _validate(self, archive: Path, version: str) -> Ranker:
        """Load the archive as serving would; ValueError (one line) if it cannot serve."""
        try:
            meta = json.loads(metadata_path(archive).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"model {version} refused: unreadable metadata: {e}") from e
        if not isinstance(meta, dict) or not meta.get("sha256"):
            raise ValueError(f"model {version} refused: its metadata records no sha256")
        try:
            ranker = load_ranker(archive)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"model {version} refused: {e}") from e
        if ranker.feature_version != FEATURE_VERSION:  # load_ranker checks it; be explicit
            raise ValueError(
                f"model {version} refused: feature_version {ranker.feature_version!r} != "
                f"{FEATURE_VERSION!r}"
            )
        return ranker

    def _bootstrap(self) -> str:
        """Register and deploy the shipped default; the caller holds the lock."""
        meta = json.loads(metadata_path(DEFAULT_PATH).read_text())
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            sha = _sha256(DEFAULT_PATH)
            version = f"lr-{meta.get('feature_version', FEATURE_VERSION)}-{sha[:12]}"
            target = self.versions_dir / version
            if not (target / ARCHIVE).is_file():
                shutil.copyfile(DEFAULT_PATH, staging / ARCHIVE)
                meta.update(
                    version=version,
                    sha256=sha,
                    source=str(DEFAULT_PATH),
                    registered_at=_now(),
                    trained_on=meta.get("trained_on") or "the shipped default (models/default)",
                )
                (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                if target.exists():
                    shutil.rmtree(target)
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._validate(target / ARCHIVE, version)
        self._set_current(version, None, "bootstrap")
        return version

    def current(self) -> str:
        """The deployed version. A registry where nothing was deployed yet registers and
        deploys the shipped default first."""
        version = self._read_pointer()
        if version is not None:
            return version
        with self._locked():
            version = self._read_pointer()  # another process may have been first
            return version if version is not None else self._bootstrap()

    def deploy(self, version: str) -> str:
        """Point `current` at `version` after loading it as serving would; returns the
        version deployed before. KeyError for an unknown version; ValueError (and
        `current` unchanged) for one that does not load or breaks the feature contract.
        Deploying the current version again changes nothing."""
        archive = self.path(version)
        self._validate(archive, version)
        previous = self.current()
        with self._locked():
            self._validate(archive, version)  # the files may have changed meanwhile
            previous = self._read_pointer() or previous
            if previous != version:
                self._set_current(version, previous, "deploy")
            return previous

    def _rollback_target(self, current: str) -> str | None:
        """The version deployed before `current`, replaying the deploy log as a stack:
        bootstrap / deploy push a version, rollback pops one."""
        stack: list[str] = []
        for entry in self._history():
            if entry.get("action") == "rollback":
                while stack and stack[-1] != entry["version"]:
                    stack.pop()
                if not stack:
                    stack.append(entry["version"])
            else:
                stack.append(entry["version"])
        while stack and stack[-1] == current:
            stack.pop()
        return stack[-1] if stack else None

    def rollback(self) -> str:
        """Re-deploy the version deployed before the current one; returns the version that
        was current. ValueError when there is nothing to roll back to, or when that
        version no longer loads (`current` unchanged)."""
        current = self.current()
        with self._locked():
            current = self._read_pointer() or current
            target = self._rollback_target(current)
            if target is None:
                raise ValueError(f"nothing to roll back to: {current} is the first deployed")
            self._validate(self.path(target), target)
            self._set_current(target, current, "rollback")
            return current

    # --- shadow ------------------------------------------------------------------------------
    @property
    def shadow_pointer(self) -> Path:
        return self.root / "shadow"

    def shadow(self) -> str | None:
        """The version scoring alongside the current one without acting, if any."""
        try:
            return json.loads(self.shadow_pointer.read_text())["version"] or None
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.shadow_pointer}: unreadable shadow pointer: {e}") from e

    def set_shadow(self, version: str | None) -> str | None:
        """Make `version` the shadow (None: no shadow) after loading it as serving would;
        returns the previous shadow. KeyError / ValueError as `deploy`."""
        if version is not None:
            self._validate(self.path(version), version)
        with self._locked():
            previous = self.shadow()
            _write_atomic(self.shadow_pointer, json.dumps({"version": version, "at": _now()}))
            return previous

    def load(self, version: str | None = None) -> Ranker:
        """The ranker of `version` (None → the deployed one)."""
        version = self.current() if version is None else version
        return load_ranker(self.path(version))
