"""Training jobs: one run at a time, in its own process, followed through files on disk.

Each job has a folder ``MODELS_DIR/.jobs/<id>/`` holding ``job.json`` (status, stage, progress, metrics, error),
``log.txt`` (everything the run printed, Keras' epoch lines included) and, while it runs, ``work/`` (data pickles
and the model being trained). The run trains into ``work/<name>/`` and, only once everything succeeded, renames
that folder to ``MODELS_DIR/<name>/`` in one step: a failed or cancelled run leaves no model behind, and
``GET /api/models`` never sees a half-written one.

Processes. The training runs in a child started with multiprocessing's *spawn* method (a fresh interpreter: the
server's threads, sockets and ONNX sessions are not copied into it), at a lower CPU priority so predictions stay
fast. TensorFlow is imported there only; the server process never imports it.

Locks (``fcntl.flock``, so they also hold between the processes of ``--workers N``):

- ``run.lock`` is held by the training process until it has written its result and cleaned up, or until it dies:
  the kernel drops it when the process ends, however it ends. So "is a job running?" has a reliable answer, and a
  job whose process died is found out and marked failed (by any server process) instead of "running" forever.
- ``start.lock`` is held briefly while a job is started, cancelled or finalised, so two servers never start two
  runs at once, and a job is never declared dead in the instant before its process takes ``run.lock``.

Cancelling writes a ``cancel`` marker and sends SIGTERM; the run stops at the next Python instruction, cleans its
work folder and marks itself cancelled. One that does not stop within ``CANCEL_GRACE_S`` is killed.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..fsutil import OutsideRootError, atomic_write, confine
from .errors import ServiceError

log = logging.getLogger("ensemble.server")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
JOB_ID = re.compile(r"^[0-9a-f]{12}$")
JOBS_DIR = ".jobs"
CANCEL_GRACE_S = 20.0
START_TIMEOUT_S = 60.0
KEEP_JOBS = 100
"""Finished jobs whose folders (job.json and log) are kept; older ones are removed when a new job starts."""

# Share of the progress bar at the start of each stage, in %.
STAGES = {"loading data": 1.0, "training CNN": 10.0, "training meta-network": 80.0, "evaluating": 92.0,
          "saving": 98.0}


class JobError(ServiceError):
    """A job request the service refuses. ``status`` is the HTTP status, ``str(err)`` one line for the user."""


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _one_line(err: object) -> str:
    from ..scan import one_line

    return one_line(err)


# --------------------------------------------------------------------------------------------------------------
# Data sources


def resolve_data(text: str, roots: Sequence[Path]) -> Path:
    """The dataset path ``text`` names, resolved inside one of ``roots`` (relative paths are tried in each root).

    JobError 403 when it is outside every root (``../``, an absolute path elsewhere, a symbolic link out),
    422 when it is inside but does not exist.
    """
    if not roots:
        raise JobError(403, "training is off: start the server with --data-root DIR to allow training on data there")
    inside = []
    for root in roots:
        try:
            path = confine(root, text)
            if path.exists():
                return path
        except OutsideRootError:
            continue
        except OSError as err:  # a name too long, a folder we may not read...
            raise JobError(422, f"cannot use data path {text!r}: {err.strerror or err}") from None
        inside.append(path)
    if inside:
        raise JobError(422, f"data not found: {text!r} does not exist in the allowed data roots")
    raise JobError(403, f"data path {text!r} is outside the allowed data roots ({', '.join(map(str, roots))})")


def check_dataset(path: Path, layout: Optional[str], roots: Sequence[Path]) -> tuple[str, int]:
    """(layout, number of images) of the dataset at ``path``, after checking that every image it lists lies in
    ``roots`` too (a CSV row or a symbolic link could point anywhere). JobError 403/422 otherwise."""
    from ..datasets import DatasetError, detect_layout, list_items

    try:
        layout = layout or detect_layout(path)
        if layout == "certh-eval":
            raise JobError(422, f"{path} is a CERTH evaluation set: train on a TrainingSet, a CSV or class folders")
        items = list_items(path, layout)
    except DatasetError as err:
        raise JobError(422, _one_line(err)) from None
    except OSError as err:
        raise JobError(422, f"cannot read the dataset at {path}: {err.strerror or err}") from None
    for item in items:
        if not any(_inside(root, item.path) for root in roots):
            raise JobError(403, f"the dataset lists {item.path}, which is outside the allowed data roots")
    return layout, len(items)


def _inside(root: Path, path: str) -> bool:
    try:
        confine(root, path)
    except (OutsideRootError, OSError):  # OSError: a symbolic link loop, which leads nowhere we can check
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Locks


def _try_flock(path: Path, timeout: Optional[float]) -> Optional[int]:
    """An fd holding an exclusive flock on ``path``, or None when it stays busy past ``timeout`` (None: one try)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if timeout is None or time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


@contextmanager
def _holding(path: Path, timeout: Optional[float]) -> Iterator[bool]:
    fd = _try_flock(path, timeout)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock


# --------------------------------------------------------------------------------------------------------------
# The manager (server side)


class JobManager:
    """Starts, follows and cancels training runs for the models under ``models_dir``.

    ``data_roots``: the folders training data must lie in. ``model_exists(name)``: whether a model name is taken.
    ``mlflow_uri``: track every run in this MLflow store (``serve --mlflow``; docs/tracking.md), or None.
    """

    def __init__(self, models_dir: str | os.PathLike, data_roots: Sequence[str | os.PathLike], model_exists=None,
                 mlflow_uri: Optional[str] = None):
        self.models_dir = Path(models_dir)
        self.dir = self.models_dir / JOBS_DIR
        self.data_roots = [Path(r).resolve() for r in data_roots]
        self.model_exists = model_exists or (lambda name: os.path.lexists(self.models_dir / name))
        self._children: dict[str, object] = {}  # job id -> multiprocessing Process started by this process
        self.mlflow_uri = mlflow_uri

    # -- paths and files ----------------------------------------------------------------------------------------
    def _job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise JobError(404, f"no job {job_id!r}")
        return self.dir / job_id

    def _read(self, job_id: str) -> dict:
        try:
            return json.loads((self._job_dir(job_id) / "job.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise JobError(404, f"no job {job_id!r}") from None

    def _write(self, state: dict) -> None:
        atomic_write(self.dir / state["id"] / "job.json", json.dumps(state, indent=1))

    def _start_lock(self, timeout: Optional[float] = START_TIMEOUT_S):
        return _holding(self.dir / "start.lock", timeout)

    def _run_lock_free(self) -> bool:
        with _holding(self.dir / "run.lock", None) as free:
            return free

    # -- starting -----------------------------------------------------------------------------------------------
    def start(self, params: dict) -> dict:
        """Check ``params`` (data, layout, name and the hyper-parameters) and start the run; returns its state.

        JobError 403/422 for bad data, 409 when a run is going on or the name is taken, 503 if the start hangs.
        """
        from .models import valid_name

        data = resolve_data(params["data"], self.data_roots)
        layout, n_images = check_dataset(data, params.get("layout"), self.data_roots)
        name = params.get("name") or datetime.now().strftime("model-%Y%m%d-%H%M%S")
        if not valid_name(name):
            raise JobError(422, f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (not 'shipped')")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock() as locked:
            if not locked:
                raise JobError(503, "the job list is busy: try again in a moment")
            self._reap_all()
            if not self._run_lock_free() and not self._unfinished():
                self._wait_for_exit(10.0)  # the last run has written its result and is exiting
            if not self._run_lock_free():
                running = self._unfinished()
                which = f" ({running[0]})" if running else ""
                raise JobError(409, f"a training job is already running{which}: one run at a time")
            if self.model_exists(name):
                raise JobError(409, f"a model named {name!r} already exists: choose another name")
            self._prune()
            job_id = uuid.uuid4().hex[:12]
            (self.dir / job_id).mkdir()
            state = {"id": job_id, "status": "queued", "stage": "queued", "progress": 0.0, "model": name,
                     "params": {**params, "layout": layout, "name": name}, "data_path": str(data),
                     "images": n_images, "created": _now(), "created_at": time.time(), "started": None,
                     "finished": None, "pid": None, "error": None, "metrics": None, "mlflow": self.mlflow_uri}
            self._write(state)
            self._spawn(job_id)
        return self.get(job_id)

    def _unfinished(self) -> list[str]:
        return [j["id"] for j in self._states() if j["status"] not in FINISHED]

    def _wait_for_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._run_lock_free():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _spawn(self, job_id: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        proc = ctx.Process(target=run_job, args=(str(self.dir / job_id), str(self.models_dir),
                                                 str(self.dir / "run.lock"), ready),
                           name=f"blur-train-{job_id}")
        proc.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.1):
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.kill()
                proc.join(5)
                state = self._read(job_id)
                state.update(status="failed", stage="failed", finished=_now(),
                             error=f"the training process did not start (exit code {proc.exitcode})")
                self._write(state)
                return
        self._children[job_id] = proc
        threading.Thread(target=self._watch, args=(job_id, proc), name=f"watch-{job_id}", daemon=True).start()
        log.info("training job %s started (pid %s)", job_id, proc.pid)

    def _watch(self, job_id: str, proc) -> None:
        proc.join()  # also reaps the process (no zombie)
        with self._start_lock(timeout=30.0) as locked:
            if locked:
                self._reap(job_id, proc.exitcode)
        self._children.pop(job_id, None)
        state = self._read(job_id)
        log.info("training job %s %s%s", job_id, state["status"], f": {state['error']}" if state["error"] else "")

    # -- following ----------------------------------------------------------------------------------------------
    def get(self, job_id: str, lines: int = 40) -> dict:
        """The job's state for the API, with the last ``lines`` lines of its log."""
        state = self._read(job_id)
        if state["status"] not in FINISHED:
            with self._start_lock(timeout=None) as locked:  # busy: a start or cancel is under way; look later
                if locked:
                    state = self._reap(job_id)
        return self._public(state, lines)

    def list(self) -> list[dict]:
        """Every job kept, newest first, without log lines."""
        if any(s["status"] not in FINISHED for s in self._states()):
            with self._start_lock(timeout=None) as locked:
                if locked:
                    self._reap_all()
        return [self._public(s, 0) for s in self._states()]

    def _states(self) -> list[dict]:
        states = []
        try:
            folders = list(self.dir.iterdir())
        except OSError:
            return []
        for folder in folders:
            if JOB_ID.match(folder.name):
                try:
                    states.append(self._read(folder.name))
                except JobError:
                    continue
        return sorted(states, key=lambda s: s.get("created_at") or 0.0, reverse=True)

    def _public(self, state: dict, lines: int) -> dict:
        keys = ("id", "status", "stage", "progress", "model", "params", "images", "created", "started", "finished",
                "error", "metrics")
        out = {k: state.get(k) for k in keys}
        out["progress"] = round(float(out["progress"] or 0.0), 1)
        out["log_tail"] = log_tail(self.dir / state["id"] / "log.txt", lines) if lines else []
        return out

    # -- cancelling ---------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "cancelled by request") -> dict:
        """Stop a queued or running job and wait until it has stopped; JobError 409 when it already finished."""
        job_dir = self._job_dir(job_id)
        self._read(job_id)  # 404 before anything else
        with self._start_lock() as locked:
            if not locked:
                raise JobError(503, "the job list is busy: try again in a moment")
            state = self._read(job_id)
            if state["status"] in FINISHED:
                raise JobError(409, f"job {job_id} already {state['status']}")
            atomic_write(job_dir / "cancel", reason)
            if self._run_lock_free():  # its process is gone already
                self._reap(job_id)
                return self.get(job_id)
            pid = state.get("pid")
            _signal(pid, signal.SIGTERM)
        if not self._wait_for_exit(CANCEL_GRACE_S):
            log.warning("training job %s did not stop within %.0f s: killing it", job_id, CANCEL_GRACE_S)
            _signal(pid, signal.SIGKILL)
            self._wait_for_exit(10.0)
        with self._start_lock() as locked:
            if locked:
                self._reap(job_id)
        return self.get(job_id)

    def shutdown(self) -> None:
        """Cancel the runs this process started (the server is stopping)."""
        for job_id, proc in list(self._children.items()):
            if proc.is_alive():
                try:
                    self.cancel(job_id, "cancelled: the server stopped")
                except JobError:
                    pass

    # -- finalising (always under start.lock) -------------------------------------------------------------------
    def _reap_all(self) -> None:
        for state in self._states():
            if state["status"] not in FINISHED:
                self._reap(state["id"])

    def _reap(self, job_id: str, exitcode: Optional[int] = None) -> dict:
        """Settle a job whose process has ended without saying how (killed, crashed): succeeded if its model is in
        place, cancelled if that was asked, failed otherwise. Removes what is left of its work folder."""
        state = self._read(job_id)
        job_dir = self.dir / job_id
        unsettled = state["status"] not in FINISHED  # settled here, unless its process still runs
        if unsettled:
            if not self._run_lock_free():
                return state  # still running
            model = self.models_dir / state["model"] / "final_model" / "metadata.json"
            try:
                done = json.loads(model.read_text(encoding="utf-8")).get("job") == job_id
            except (OSError, ValueError, AttributeError):
                done = False
            if done:
                state.update(status="succeeded", stage="done", progress=100.0)
            elif (job_dir / "cancel").exists():
                state.update(status="cancelled", stage="cancelled",
                             error=(job_dir / "cancel").read_text(encoding="utf-8", errors="replace").strip())
            else:
                code = f" (exit code {exitcode})" if exitcode is not None else ""
                state.update(status="failed", stage="failed", error=f"the training process stopped unexpectedly{code}")
            state["finished"] = state.get("finished") or _now()
        shutil.rmtree(job_dir / "work", ignore_errors=True)  # before a settled status is written: see run_job
        if unsettled:
            self._write(state)
        return state

    def _prune(self) -> None:
        finished = [s for s in self._states() if s["status"] in FINISHED]
        for state in finished[KEEP_JOBS:]:
            shutil.rmtree(self.dir / state["id"], ignore_errors=True)


def _signal(pid, sig) -> None:
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def log_tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a log; a line redrawn with carriage returns shows its final state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    out = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in out if line][-lines:]


# --------------------------------------------------------------------------------------------------------------
# The training process


class JobCancelled(BaseException):
    """Raised in the training process by SIGTERM; a BaseException so that no ``except Exception`` swallows it."""


class _Run:
    """The training process's side of one job: its state file, its log and its cancellation."""

    def __init__(self, job_dir: Path):
        self.dir = job_dir
        self.state = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
        self.committing = False

    def update(self, **fields) -> None:
        self.state.update(fields)
        atomic_write(self.dir / "job.json", json.dumps(self.state, indent=1))

    def log(self, message: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)

    def stage(self, name: str) -> None:
        self.log(f"stage: {name}")
        self.update(stage=name, progress=STAGES[name])

    def on_sigterm(self, signum, frame) -> None:
        if self.committing:
            return  # the model is being moved into place: too late to cancel
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cancellation; the clean-up must not be interrupted
        raise JobCancelled()

    def watch_cancel(self) -> None:
        """Thread: turn a ``cancel`` marker (written by any server process) into SIGTERM."""
        while not (self.dir / "cancel").exists():
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    def cancel_reason(self) -> str:
        try:
            return (self.dir / "cancel").read_text(encoding="utf-8", errors="replace").strip() or "cancelled"
        except OSError:
            return "cancelled"


def run_job(job_dir: str, models_dir: str, run_lock: str, ready) -> None:
    """Entry point of the training process (multiprocessing spawn target)."""
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal: the server cancels us itself
    warnings.simplefilter("ignore")  # library deprecation chatter would crowd the log tail the API shows
    run = _Run(Path(job_dir))
    lock_fd = os.open(run_lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held until this process ends; free at once (checked under start.lock)
    run.update(status="running", stage="starting", pid=os.getpid(), started=_now())
    ready.set()
    _redirect_output(run.dir / "log.txt")
    try:
        os.nice(10)  # training yields the CPU to predictions
    except OSError:
        pass
    signal.signal(signal.SIGTERM, run.on_sigterm)
    threading.Thread(target=run.watch_cancel, daemon=True).start()
    work = run.dir / "work"
    try:
        metrics = _train(run, work, Path(models_dir))
    except JobCancelled:
        run.log("cancelled")
        final = dict(status="cancelled", stage="cancelled", error=run.cancel_reason())
    except BaseException as err:  # noqa: BLE001 - every failure ends as a status with one line
        known = _known_error(err)
        reason = _one_line(err) if known else f"unexpected error: {type(err).__name__}: {_one_line(err)}"
        if not known:  # kept for whoever debugs it; the API shows the one line
            (run.dir / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
        run.log(f"error: {reason}")
        final = dict(status="failed", stage="failed", error=reason)
    else:
        run.log("done")
        final = dict(status="succeeded", stage="done", progress=100.0, metrics=metrics)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The work folder goes before the final status does, so no finished job is ever seen with one.
        shutil.rmtree(work, ignore_errors=True)
    run.update(**final, finished=_now())
    try:
        sys.stdout.flush()
    finally:
        os.close(lock_fd)  # the next run may start while this interpreter shuts TensorFlow down


def _known_error(err: BaseException) -> bool:
    from ..datasets import DatasetError
    from ..tracking import TrackingError

    return isinstance(err, (DatasetError, ValueError, OSError, MemoryError, TrackingError))


def _redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so TensorFlow's C++ lines too) to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass


def _tracked_call(run: _Run, params: dict, name: str, out: Path, target: Path):
    """How ``_train`` calls a pipeline stage: directly, or as a child run of the job's parent MLflow run (named for
    the model) when the server tracks (``serve --mlflow``)."""
    uri = run.state.get("mlflow")
    if not uri:
        return lambda func, *args, **kwargs: func(*args, **kwargs)
    from ..tracking import Tracker

    tracker = Tracker(uri, params=params, parent_name=name, quiet=True,
                      parent_tags={"blur.job": run.state["id"], "blur.trained_by": "blur-detect serve"},
                      moved_to=(out, target))
    run.log(f"tracking in MLflow at {uri}")
    return tracker.run


def _train(run: _Run, work: Path, models_dir: Path) -> dict:
    """The pipeline's stages on the job's data, into ``work``; on success the model is moved into ``models_dir``.

    Returns the metrics: cross-validated ("validation") and, for CSV and folder layouts, on the held-out scenes
    ("test").
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .. import pipeline

    p, state = run.state["params"], run.state
    name, layout, data = state["model"], p["layout"], Path(state["data_path"])
    out = work / name
    (work / "data").mkdir(parents=True, exist_ok=True)
    train_pkl, test_pkl = work / "data" / "train.pkl", work / "data" / "test.pkl"
    held_out = layout in ("csv", "folders")  # CERTH training sets have no scenes to hold out
    call = _tracked_call(run, p, name, out, models_dir / name)

    run.stage("loading data")
    loaded = pipeline.load_split(data, "train", train_pkl, layout, p["test_fraction"], p["seed"], progress=False)
    run.log(f"training side: {loaded['images']} images ({loaded['blurry']} blurry), "
            f"{len(loaded['skipped'])} unreadable skipped")
    for problem in loaded["skipped"][:20]:
        run.log(f"skipped {problem}")
    test_images = None
    if held_out:
        tested = pipeline.load_split(data, "test", test_pkl, layout, p["test_fraction"], p["seed"], progress=False)
        test_images = tested["images"]
        run.log(f"held-out side: {tested['images']} images ({tested['blurry']} blurry)")

    run.stage("training CNN")
    epochs = p["epochs"]
    span = STAGES["training meta-network"] - STAGES["training CNN"]

    def on_epoch(epoch: int, logs: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float)))
        run.log(f"CNN epoch {epoch}/{epochs}: {shown}")
        run.update(progress=STAGES["training CNN"] + span * min(1.0, epoch / epochs))

    call(pipeline.train_cnn_stage, train_pkl, out / "model", epochs=epochs, batch_size=p["batch_size"],
         patches_per_image=p["patches_per_image"], patience=p["patience"], seed=p["seed"], verbose=2,
         patch_size=p["patch_size"], on_epoch=on_epoch, meta_fraction=p["meta_fraction"])

    run.stage("training meta-network")
    trained = call(pipeline.train_meta_stage, train_pkl, out / "model", out / "final_model", folds=p["meta_folds"],
                   max_epochs=p["meta_max_epochs"], patience=p["meta_patience"], seed=p["seed"], progress=False,
                   members=p["meta_members"])
    run.log(f"meta-network: {trained['members']} averaged, epochs {trained['epochs']}, "
            f"cross-validated {trained['validation']}")
    test = None
    if held_out:
        run.stage("evaluating")
        report = call(pipeline.evaluate_stage, test_pkl, out, plots_dir=out / "reports",
                      json_out=out / "reports" / "test_report.json", progress=False)
        test = report["sets"]["all"]["ensemble"]
        run.log(f"held-out scenes: {test}")

    run.stage("saving")
    meta_file = out / "final_model" / "metadata.json"
    metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    metadata.update(name=name, job=state["id"], trained_by="blur-detect serve", request=p, test_metrics=test)
    metadata["data"].update(train_pkl=None, test_images=test_images)  # the pickles were temporary
    atomic_write(meta_file, json.dumps(metadata, indent=1))
    target = models_dir / name
    run.committing = True
    if os.path.lexists(target):
        raise OSError(f"a model named {name!r} appeared while training: nothing was replaced")
    os.rename(out, target)  # the one step that makes the model visible
    run.log(f"model saved as {name!r}")
    return {"validation": metadata.get("validation_metrics"), "test": test}
