"""Experiment tracking with MLflow (the ``track`` extra): ``--mlflow [URI]`` on CNN.py, train.py and test.py, and
``blur-detect serve --mlflow [URI]`` for the service's training jobs. See docs/tracking.md.

One pipeline run is one **parent** MLflow run, and each stage it runs is a **child** run nested under it (CNN,
meta-network, kind head, evaluation). The stages are separate processes, so the parent is found again through the
model folders: a tracked stage that writes a model folder leaves ``mlflow_run.json`` there (the tracking URI, the
experiment, the parent and its own run id, and the ``created`` stamp of the folder's record, ``cnn.json`` or
``metadata.json``). ``train.py`` reads it from its ``--model`` folder, ``test.py`` from the model root's
``final_model/`` (then ``model/``). A record that names another tracking store, or whose folder was retrained since
(its ``created`` stamp changed), or whose parent run is gone, is not followed: the stage starts a new parent.
``BLUR_MLFLOW_PARENT=<run id>`` overrides all of that and nests every stage under that run.

The pipeline's stage functions know nothing of MLflow: :meth:`Tracker.run` wraps a call of one, passes the CNN
stage an ``on_epoch`` callback for the per-epoch metrics, and logs the stage's returned dict and the files it
wrote. MLflow is imported here only, inside the functions, and only when tracking was asked for.
"""
from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path

MISSING = "error: --mlflow needs the track extra: pip install 'blur-ensemble[track]'"
"""The one line a stage script prints (exit status 2) when --mlflow is given and mlflow is not installed."""
LOCAL_STORE = "./mlruns"
"""What a bare ``--mlflow`` means: a local file store in the current folder."""
RECORD = "mlflow_run.json"
"""The file a tracked stage leaves in the model folder it wrote, for the next stage to find the parent run."""
PARENT_ENV = "BLUR_MLFLOW_PARENT"

HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""MLflow's HTTP settings for a tracking server, unless the environment sets them: a server that is down or
unreachable is reported in under a minute, before any training starts."""
"""Environment variable: an existing run id that every tracked stage nests under."""
EXPERIMENT = "blur-ensemble"
"""The experiment runs go to, unless $MLFLOW_EXPERIMENT_NAME names another."""

_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


class TrackingError(RuntimeError):
    """Tracking cannot go on: MLflow missing, the store unreachable, a parent run that does not exist. One line."""


def require() -> None:
    """Raise TrackingError(:data:`MISSING`) unless mlflow can be imported."""
    import importlib

    try:
        importlib.import_module("mlflow")
    except ImportError:
        raise TrackingError(MISSING) from None


def resolve_uri(value: str | None, cwd: str | Path | None = None) -> str | None:
    """The tracking URI that ``--mlflow VALUE`` names: a URI (``file:``, ``http://``, ``sqlite:``, ``databricks``)
    is passed through; a plain path (and a bare ``--mlflow``: ``./mlruns``) becomes an absolute ``file:`` URI,
    resolved against ``cwd`` (default: the current folder), so every stage agrees on it wherever it runs from."""
    if value is None:
        return None
    if ":" in value or value in ("databricks", "databricks-uc"):
        return value
    return Path(os.path.abspath(Path(cwd or os.getcwd()) / Path(value).expanduser())).as_uri()


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _key(text: str) -> str:
    return _KEY.sub("_", str(text))[:250]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy scalars
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(value.dtype, np.number):
                value = value.item()
            else:
                return None
        except ImportError:
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def flatten(tree, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested dicts as ``{"a.b.c": value}`` (lists, strings, booleans and None left out)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        number = _number(tree)
        if number is not None and prefix:
            out[_key(prefix[:-1])] = number
    return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _note(message: str) -> None:
    print(f"mlflow: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# What each stage logs. Each gets the tracker, the child run id, the stage's arguments by name and its result.


def _log_cnn(t: "Tracker", run_id: str, args: dict, result: dict) -> dict:
    out = Path(args["out_dir"])
    info = _read_json(out / "cnn.json") or {}
    images, patches = info.get("images", {}), info.get("patches", {})
    tags = {"data.fingerprint": info.get("train_fingerprint"), "data.cnn_fit_images": images.get("cnn_fit"),
            "data.meta_holdout_images": images.get("meta_holdout"),
            "cnn.patches_train": patches.get("train"), "cnn.patches_val": patches.get("val"),
            "cnn.devices": ",".join(info.get("devices", [])), "model.folder": t.where(out)}
    t.tags(run_id, tags)
    # What the flags resolved to (--batch-size auto, --lr from the batch size, ...), beside the flags themselves.
    t.log_params(run_id, {f"resolved.{k}": v for k, v in (info.get("hyperparameters") or {}).items()})
    t.metrics(run_id, {"epochs_run": result.get("epochs_run"), "params_count": result.get("params"),
                       "seconds": result.get("seconds"), "peak_rss_mb": result.get("peak_rss_mb"),
                       **flatten(result.get("val_patch_metrics") or {}, "val_patch_")})
    t.files(run_id, [out / "training_curves.png", out / "cnn.json", out / "training_log.csv"])
    t.folder(run_id, out, "model")
    t.tags(t.parent_id, {"data.fingerprint": info.get("train_fingerprint")})
    return {"record": "cnn.json", "created": info.get("created"), "fingerprint": info.get("train_fingerprint")}


def _log_meta(t: "Tracker", run_id: str, args: dict, result: dict) -> dict:
    out = Path(args["out_dir"])
    meta = _read_json(out / "metadata.json") or {}
    data = meta.get("data", {})
    t.tags(run_id, {**{f"data.{k}": data.get(k) for k in ("fingerprint", "layout", "root", "images", "blurry",
                                                            "cnn_fit_images", "meta_validation_images",
                                                            "validated_on_cnn_photos")},
                    "model.folder": t.where(out)})
    val = flatten(meta.get("validation_metrics") or {}, "val_")
    t.metrics(run_id, {**val, **flatten(meta.get("camera_validation_metrics") or {}, "camera_val_"),
                       **flatten(meta.get("baselines") or {}), "seconds": result.get("seconds"),
                       "peak_rss_mb": result.get("peak_rss_mb")})
    # The per-member and per-fold figures train_meta_stage records: each member's epochs (step: member), each
    # fold's best epoch (one series per member, step: fold) and each member's Platt parameters.
    for k, member in enumerate(meta.get("meta", {}).get("bag", [])):
        t.metrics(run_id, {"member_epochs": member.get("epochs")}, step=k)
        platt = member.get("calibration_platt") or []
        if len(platt) == 2:
            t.metrics(run_id, {"member_platt_a": platt[0], "member_platt_b": platt[1]}, step=k)
        for fold, epochs in enumerate(member.get("fold_epochs") or []):
            t.metrics(run_id, {f"fold_best_epoch_member_{k}": epochs}, step=fold)
    t.files(run_id, [out / "metadata.json"])
    t.folder(run_id, out, "final_model")
    t.tags(t.parent_id, {"data.fingerprint": data.get("fingerprint")})
    t.metrics(t.parent_id, val)
    return {"record": "metadata.json", "created": meta.get("created"), "fingerprint": data.get("fingerprint")}


def _log_kind(t: "Tracker", run_id: str, args: dict, result: dict) -> dict | None:
    out = Path(args["out_dir"])
    info = _read_json(out / "kind.json") or {}
    data = info.get("data", {})
    t.tags(run_id, {"data.fingerprint": data.get("fingerprint"), "data.sharp_photos": data.get("sharp_photos"),
                    "data.synthetic_rows": data.get("synthetic_rows"),
                    "data.real_kind_rows": data.get("real_kind_rows"),
                    "model.folder": t.where(out)})
    t.metrics(run_id, {**flatten(info.get("validation_metrics") or {}, "val."), "epochs": _number(info.get(
        "training", {}).get("epochs")), "seconds": result.get("seconds"), "peak_rss_mb": result.get("peak_rss_mb")})
    t.files(run_id, [out / "kind.json"])
    t.files(run_id, [out / "kind.onnx", out / "kind.json"], "final_model")
    meta = _read_json(out / "metadata.json")
    if meta and meta.get("created"):  # the meta-network beside it is the folder's record
        return {"record": "metadata.json", "created": meta.get("created"), "fingerprint": data.get("fingerprint")}
    return None


def _log_evaluate(t: "Tracker", run_id: str, args: dict, result: dict) -> None:
    root = _model_root(args.get("model_root"))
    meta = _read_json(root / "final_model" / "metadata.json") or {}
    recorded = meta.get("test_metrics") or {}
    tags = {"model.root": t.where(root), "model.fingerprint": meta.get("data", {}).get("fingerprint"),
            "test.pkl": str(args.get("test_pkl")), "test.recorded": "recorded" in result}
    if result.get("recorded"):
        tags.update({"data.fingerprint": recorded.get("fingerprint"), "test.scenes": recorded.get("scenes")})
    t.tags(run_id, tags)
    metrics = {"threshold": result.get("threshold"), "seconds": result.get("seconds"),
               "peak_rss_mb": result.get("peak_rss_mb")}
    plots_dir = Path(args.get("plots_dir") or "reports")
    plots = []
    for name, columns in (result.get("sets") or {}).items():
        prefix = "test_" if name == "all" else f"test_{name}_"
        for column, figures in columns.items():
            metrics.update(flatten(figures, f"{prefix}{column}_"))
            interval = figures.get("roc_auc_interval_95")
            if interval:
                metrics.update({f"{prefix}{column}_roc_auc_low": interval[0],
                                f"{prefix}{column}_roc_auc_high": interval[1]})
        tag = name.replace(" ", "_")
        plots += [plots_dir / f"{kind}_{tag}.png" for kind in ("roc", "confusion", "reliability")]
    for name, figures in ((result.get("kind") or {}).get("sets") or {}).items():
        metrics.update(flatten(figures, f"kind.{name}."))
    t.metrics(run_id, metrics)
    t.files(run_id, plots, "plots")
    report = [Path(args["json_out"])] if args.get("json_out") else []
    t.files(run_id, [root / "final_model" / "metadata.json", *report])
    headline = {k: v for k, v in metrics.items() if k.startswith("test_ensemble_")}
    t.metrics(t.parent_id, headline)


def _model_root(model_root) -> Path:
    if model_root is not None:
        return Path(model_root)
    from .detector import default_model_root

    return default_model_root()


STAGES = {
    # function name: (child run name, stage tag, logger, where to look for the parent's record)
    "train_cnn_stage": ("CNN", "cnn", _log_cnn, lambda a: []),
    "train_meta_stage": ("meta-network", "meta", _log_meta, lambda a: [a["model_dir"]]),
    "train_kind_stage": ("kind head", "kind", _log_kind, lambda a: [a["out_dir"], Path(a["out_dir"]).parent / "model"]),
    "evaluate_stage": ("evaluation", "evaluate", _log_evaluate,
                       lambda a: [_model_root(a["model_root"]) / sub for sub in ("final_model", "model")]),
}
"""The stages :meth:`Tracker.run` tracks; any other function is just called."""


# --------------------------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """Tracks the stages of one pipeline run (one script, or one service job) in the MLflow store at ``uri``.

    ``params``: logged as every child run's parameters (a script's flags, a job's request). ``parent_name`` and
    ``parent_tags``: for a parent run this tracker starts (default name: ``pipeline <folder> <date time>``).
    ``moved_to``: (folder, final folder) when the stages write into a folder that is renamed afterwards (a service
    job's work folder), so that the folder tags name where the model ends up.
    """

    errors = (TrackingError,)
    """Exceptions :func:`ensemble.cli_common.run_stage` reports as one ``error:`` line."""

    def __init__(self, uri: str, params: dict | None = None, parent_name: str | None = None,
                 parent_tags: dict | None = None, quiet: bool = False, moved_to: tuple | None = None):
        require()
        self.uri = resolve_uri(uri)
        if _is_file_store(self.uri):  # MLflow 3 keeps its file store only on request; this is the one we document
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        else:  # MLflow's own default (7 retries, 120 s each) makes a server that is down look like a hang
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
        self.params = {k: v for k, v in (params or {}).items() if k != "mlflow"}
        self.parent_name, self.parent_tags, self.quiet = parent_name, dict(parent_tags or {}), quiet
        self.moved_to = None if moved_to is None else (Path(moved_to[0]).resolve(), Path(moved_to[1]))
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        self._warned = False
        self._noted = False

    @classmethod
    def from_args(cls, args) -> "Tracker":
        """The tracker of a stage script: ``args.mlflow`` is the URI, every other flag a parameter."""
        return cls(args.mlflow, params=vars(args))

    def where(self, folder) -> str:
        """``folder`` as a tag names it: absolute, and where it ends up if it is moved (``moved_to``)."""
        path = Path(folder).resolve()
        if self.moved_to is not None:
            try:
                return str(self.moved_to[1] / path.relative_to(self.moved_to[0]))
            except ValueError:
                pass
        return str(path)

    # -- MLflow calls -------------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self.experiment_id is None:
            from mlflow.exceptions import MlflowException

            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(name)
                except MlflowException:  # created meanwhile by another process
                    self.experiment_id = self.client.get_experiment_by_name(name).experiment_id
            else:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def _batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        for i in range(0, max(len(metrics), len(params), len(tags), 1), 100):
            self.client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100], tags=tags[i:i + 100])

    def metrics(self, run_id: str | None, values: dict, step: int = 0) -> None:
        """Log the finite numbers of ``values`` (others left out) at ``step``."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        rows = [Metric(_key(k), n, stamp, int(step)) for k, v in values.items() if (n := _number(v)) is not None]
        if run_id and rows:
            self._batch(run_id, metrics=rows)

    def tags(self, run_id: str | None, values: dict) -> None:
        """Set the tags of ``values`` that are not None."""
        from mlflow.entities import RunTag

        rows = [RunTag(_key(k), str(v)[:5000]) for k, v in values.items() if v is not None and v != ""]
        if run_id and rows:
            self._batch(run_id, tags=rows)

    def log_params(self, run_id: str, values: dict) -> None:
        from mlflow.entities import Param

        self._batch(run_id, params=[Param(_key(k), str(v)[:6000]) for k, v in values.items()])

    def files(self, run_id: str, paths, artifact_path: str | None = None) -> None:
        """Log the files of ``paths`` that exist (a plot a stage did not draw is left out)."""
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    def folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        """Log the contents of ``folder`` under ``artifact_path`` (without the tracking record)."""
        folder = Path(folder)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != RECORD:
                rel = path.relative_to(folder).parent
                self.client.log_artifact(run_id, str(path), f"{artifact_path}/{rel.as_posix()}" if rel.parts
                                         else artifact_path)

    def _warn(self, err: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: mlflow: {_one_line(err)} (the stage goes on; this run's tracking may be incomplete)",
                  file=sys.stderr, flush=True)

    # -- the parent run -----------------------------------------------------------------------------------------
    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage == "active"

    def _from_record(self, folder) -> str | None:
        """The parent run id that ``folder``/mlflow_run.json names, if it still holds for this store and folder."""
        record = _read_json(Path(folder) / RECORD)
        if not record or not record.get("parent_run_id"):
            return None
        if record.get("tracking_uri") != self.uri:
            if not self.quiet and not self._noted:
                self._noted = True
                _note(f"{Path(folder) / RECORD} names another tracking store ({record.get('tracking_uri')}): "
                      "this stage gets a parent run of its own")
            return None
        stamp = _read_json(Path(folder) / str(record.get("record")))
        if not stamp or stamp.get("created") != record.get("created"):
            return None  # the folder was retrained (untracked) since the record was written
        if not self._exists(record["parent_run_id"]):
            return None
        self.experiment_id = record.get("experiment_id") or self.experiment_id
        return record["parent_run_id"]

    def _find_parent(self, folders, out_dir) -> str:
        override = os.environ.get(PARENT_ENV)
        if override:
            if not self._exists(override):
                raise TrackingError(f"mlflow: {PARENT_ENV}={override} is no run in {self.uri}")
            self.experiment_id = self.client.get_run(override).info.experiment_id
            return override
        for folder in folders:
            found = self._from_record(folder)
            if found:
                return found
        where = Path(out_dir).resolve() if out_dir is not None else Path.cwd()
        if where.name in ("model", "final_model", "reports"):
            where = where.parent
        name = self.parent_name or f"pipeline {where.name} {_dt.datetime.now():%Y-%m-%d %H:%M:%S}"
        tags = {"blur.kind": "pipeline", "blur.folder": self.where(where), **self.parent_tags}
        run = self.client.create_run(self._experiment(), run_name=name,
                                     tags={_key(k): str(v) for k, v in tags.items() if v is not None})
        return run.info.run_id

    # -- one stage ----------------------------------------------------------------------------------------------
    def run(self, func, *args, **kwargs):
        """Call the stage ``func(*args, **kwargs)`` as a child run of the pipeline's parent and log what it made.

        A failure to reach the store before the stage starts is a TrackingError (the stage does not run); one
        while logging afterwards is a warning line (the stage's model is written all the same).
        """
        spec = STAGES.get(getattr(func, "__name__", ""))
        if spec is None:
            return func(*args, **kwargs)
        name, stage, logger, parent_folders = spec
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        named = dict(bound.arguments)
        from mlflow.exceptions import MlflowException

        try:
            if self.parent_id is None:
                self.parent_id = self._find_parent([f for f in parent_folders(named) if f is not None],
                                                   named.get("out_dir") or named.get("model_root"))
            self.client.update_run(self.parent_id, status="RUNNING")
            child = self.client.create_run(self._experiment(), run_name=name, tags={
                "mlflow.parentRunId": self.parent_id, "blur.stage": stage})
            run_id = child.info.run_id
            self.log_params(run_id, self.params)
        except (MlflowException, OSError) as err:
            raise TrackingError(f"mlflow: {_one_line(err)}") from None
        if not self.quiet:
            _note(f"tracking the {name} stage as run {run_id} (parent {self.parent_id}) in {self.uri}")
        if "on_epoch" in named:
            named["on_epoch"] = self._epoch_logger(run_id, named["on_epoch"])
        try:
            result = func(**named)
        except BaseException as err:
            stopped = isinstance(err, KeyboardInterrupt) or type(err).__name__ == "JobCancelled"
            status = "KILLED" if stopped else "FAILED"
            self._end(run_id, status)
            raise
        try:
            record = logger(self, run_id, named, result if isinstance(result, dict) else {})
            if record and named.get("out_dir") is not None:
                self._write_record(Path(named["out_dir"]), run_id, stage, record)
        except (MlflowException, OSError, ValueError, TypeError, KeyError) as err:
            self._warn(err)
        self._end(run_id, "FINISHED")
        return result

    def _epoch_logger(self, run_id: str, previous):
        def on_epoch(epoch: int, logs: dict) -> None:
            try:
                self.metrics(run_id, logs, step=epoch)
            except Exception as err:  # noqa: BLE001 - tracking must never stop a training run
                self._warn(err)
            if previous is not None:
                previous(epoch, logs)

        return on_epoch

    def _end(self, run_id: str, status: str) -> None:
        try:
            self.client.set_terminated(run_id, status)
            self.client.set_terminated(self.parent_id, status)
        except Exception as err:  # noqa: BLE001 - the stage's own outcome matters more than its run's status
            self._warn(err)

    def _write_record(self, out_dir: Path, run_id: str, stage: str, record: dict) -> None:
        from .fsutil import atomic_write

        atomic_write(out_dir / RECORD, json.dumps({
            "tracking_uri": self.uri, "experiment_id": self.experiment_id, "parent_run_id": self.parent_id,
            "run_id": run_id, "stage": stage, **record}, indent=1))
