"""The model registry: the shipped model plus the models trained through the service, and which one is active.

A model is a folder holding ``model/`` (the CNN) and ``final_model/`` (the meta-network and ``metadata.json``),
exactly like the repository. Service-trained models live in ``MODELS_DIR/<name>/``; the shipped model is called
``shipped``. Entries whose names start with a dot (``.jobs``, temporary folders) are not models.

The active model's name is kept in ``MODELS_DIR/active.json`` (written atomically), so that every server process
(``--workers N``) serves the same model: each process compares the file's stamp (mtime, size, inode) on every
request, a single ``stat``, and loads the new model when it changed. Swapping is a reference assignment: a request
takes the current detector once and keeps it to the end, so requests in flight finish on the model they started
with, and none fails during a switch.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..fsutil import OutsideRootError, atomic_write, confine
from .errors import ServiceError

log = logging.getLogger("ensemble.server")

SHIPPED = "shipped"
ACTIVE_FILE = "active.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


class ModelError(ServiceError):
    """A model cannot be found or loaded. ``status``: 404 unknown, 422 unusable; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ModelEntry:
    """One model folder. ``metadata`` is its final_model/metadata.json (empty when ``error`` says why not)."""

    name: str
    root: Path
    metadata: dict
    shipped: bool
    error: Optional[str] = None

    def summary(self, active: bool) -> dict:
        """The JSON description served by ``GET /api/models``: hyper-parameters, data counts, metrics."""
        m = self.metadata
        cnn, meta, data = m.get("cnn", {}), m.get("meta", {}), m.get("data", {})
        hyper = dict(cnn.get("hyperparameters", {}))
        hyper.update({f"meta_{k}": v for k, v in meta.items()
                      if k in ("folds", "max_epochs", "patience", "hidden", "dropout", "l2", "learning_rate",
                               "members")})
        if "meta_fraction" in cnn:
            hyper["meta_fraction"] = cnn["meta_fraction"]
        if "seed" in meta:
            hyper["seed"] = meta["seed"]
        counts = {k: data[k] for k in ("images", "blurry", "cnn_fit_images", "meta_images") if k in data}
        if "test_images" in data:
            counts["test_images"] = data["test_images"]
        metrics = {"validation": m.get("validation_metrics"), "test": m.get("test_metrics")}
        return {
            "name": self.name, "active": active, "shipped": self.shipped, "created": m.get("created"),
            "threshold": m.get("threshold"), "job": m.get("job"),
            "data": {"layout": data.get("layout"), "source": _source(data.get("root")), **counts},
            "hyperparameters": hyper, "epochs_run": {"cnn": cnn.get("epochs_run"), "meta": meta.get("epochs")},
            "metrics": metrics, "error": self.error,
        }


def _source(root) -> Optional[str]:
    """The training data as served: a relative path as recorded, an absolute one (models trained before paths
    were recorded relative) cut to its last part, the dataset's name, so no path of the training machine shows."""
    if not isinstance(root, str) or not root:
        return None
    return Path(root).name if os.path.isabs(root) or root.startswith("~") else root


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and name != SHIPPED


def _read_entry(name: str, root: Path, shipped: bool) -> ModelEntry:
    from ..detector import CNN_DIR, META_DIR

    try:
        metadata = json.loads((root / META_DIR / "metadata.json").read_text(encoding="utf-8"))
        if not isinstance(metadata, dict):
            raise ValueError("metadata.json is not an object")
    except (OSError, ValueError) as err:
        return ModelEntry(name, root, {}, shipped, f"unreadable metadata.json: {' '.join(str(err).split())}")
    missing = [f"{d}/{f}" for d, f in ((CNN_DIR, "cnn.onnx"), (META_DIR, "meta.onnx")) if not (root / d / f).is_file()]
    error = f"missing {', '.join(missing)}" if missing else None
    return ModelEntry(name, root, metadata, shipped, error)


class ModelRegistry:
    """The models under ``models_dir`` plus the shipped one at ``shipped_root``, and the active detector.

    ``threads``: ONNX Runtime threads per session (1: requests run side by side on their own threads). ``device``:
    where the CNN runs ('auto', 'cpu' or 'cuda', as for BlurDetector.load); on a GPU the CNN calls of requests
    scored at the same time are joined (ensemble.batching).
    """

    def __init__(self, models_dir: str | os.PathLike, shipped_root: str | os.PathLike | None = None, threads: int = 1,
                 device: str = "cpu"):
        from ..detector import default_model_root

        self.models_dir = Path(models_dir)
        self.shipped_root = Path(shipped_root) if shipped_root is not None else default_model_root()
        self.threads = threads
        self.device = device
        self._lock = threading.Lock()  # one load at a time; readers never wait on it
        self._current: Optional[tuple[str, object]] = None  # (name, BlurDetector), replaced whole
        self._stamp: Optional[tuple] = None  # active.json stamp the current detector answers to
        self._failed: dict[tuple, str] = {}  # stamps whose model failed to load (no retry storm)

    # -- listing ------------------------------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        """The shipped model first, then the service's models by name."""
        found = [_read_entry(SHIPPED, self.shipped_root, True)]
        try:
            names = sorted(p.name for p in self.models_dir.iterdir() if valid_name(p.name) and p.is_dir())
        except OSError:
            names = []
        for name in names:
            try:
                root = confine(self.models_dir, name)  # a symbolic link out of the models folder is no model
            except OutsideRootError:
                continue
            if (root / "final_model").is_dir():
                found.append(_read_entry(name, root, False))
        return found

    def entry(self, name: str) -> ModelEntry:
        """The model called ``name``; ModelError 404 when there is none."""
        if name == SHIPPED:
            return _read_entry(SHIPPED, self.shipped_root, True)
        if valid_name(name):
            try:
                root = confine(self.models_dir, name)
            except (OutsideRootError, OSError):  # OSError: a symbolic link loop is no model either
                root = None
            if root is not None and (root / "final_model").is_dir():
                return _read_entry(name, root, False)
        raise ModelError(404, f"no model named {name!r}")

    def exists(self, name: str) -> bool:
        return name == SHIPPED or os.path.lexists(self.models_dir / name)

    # -- the active model ---------------------------------------------------------------------------------------
    def _active_stamp(self) -> Optional[tuple]:
        try:
            st = os.stat(self.models_dir / ACTIVE_FILE)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def active_name(self) -> str:
        """The name in active.json, or ``shipped`` when there is none (or it is unreadable)."""
        try:
            name = json.loads((self.models_dir / ACTIVE_FILE).read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            return SHIPPED
        return name if isinstance(name, str) and name else SHIPPED

    def current(self) -> tuple[str, object]:
        """(name, BlurDetector) of the active model, reloaded first if another process switched it.

        A model that fails to load is logged once and the previous one goes on serving.
        """
        stamp, current = self._active_stamp(), self._current
        if current is not None and (stamp == self._stamp or stamp in self._failed):
            return current
        with self._lock:
            if self._current is not None and (stamp == self._stamp or stamp in self._failed):
                return self._current
            name = self.active_name()
            if self._current is not None and self._current[0] == name:
                self._stamp = stamp
                return self._current
            try:
                detector = self.load(name)
            except ModelError as err:
                if self._current is None and name != SHIPPED:
                    log.warning("active model %r cannot be loaded (%s); serving the shipped model", name, err)
                    self._failed[stamp] = str(err)
                    self._current, self._stamp = (SHIPPED, self.load(SHIPPED)), stamp
                    return self._current
                if self._current is None:
                    raise
                log.warning("model %r cannot be loaded (%s); still serving %r", name, err, self._current[0])
                self._failed[stamp] = str(err)
                return self._current
            self._current, self._stamp = (name, detector), stamp
            log.info("serving model %r", name)
            return self._current

    def detector(self):
        """The active BlurDetector (the callable handed to the review page)."""
        return self.current()[1]

    def load(self, name: str):
        """Load and probe the model ``name``; ModelError 404/422 with one line when it cannot serve."""
        from ..detector import BlurDetector
        from ..runtime import DeviceError

        entry = self.entry(name)
        if entry.error:
            raise ModelError(422, f"model {name!r} cannot be used: {entry.error}")
        try:
            detector = BlurDetector.load(entry.root, threads=self.threads, device=self.device).check()  # fails here
        except DeviceError as err:
            if self._current is None:
                raise  # at start-up: blur-detect serve --device cuda exits with it (status 2)
            raise ModelError(422, f"model {name!r} cannot be loaded: {err}") from None
        except Exception as err:  # noqa: BLE001 - any broken model file is one line for the user
            raise ModelError(422, f"model {name!r} cannot be loaded: {' '.join(str(err).split())}") from None
        return detector

    def activate(self, name: str) -> ModelEntry:
        """Load ``name``, make it the active model of every server process, and serve it here at once."""
        with self._lock:
            detector = self.load(name)
            self.models_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.models_dir / ACTIVE_FILE,
                         json.dumps({"name": name, "activated": datetime.now().isoformat(timespec="seconds")}))
            self._current, self._stamp = (name, detector), self._active_stamp()
            self._failed.clear()
        log.info("activated model %r", name)
        return self.entry(name)
