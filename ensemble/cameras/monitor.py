"""One round of checks: grab every camera at once, score the frames, judge each camera against its own baseline.

A check ends in one of five states:

* ``UNREACHABLE``: no frame by the deadline: timeout, refused, bad credentials, an HTTP error, or bytes that are
  not a picture ("no frame").
* ``INVALID``: a frame came, but it shows nothing to judge: black, uniform (covered, fogged white, a flat test
  card), or frozen (identical to the frame of the previous check).
* ``BLURRY``: the ensemble's calibrated blur probability reaches the camera's threshold: the absolute verdict.
* ``DEGRADED``: the camera's focus score fell more than ``drop`` below its baseline, the median score of its last
  healthy checks.
* ``CLEAR``: none of those. Only CLEAR checks feed the baseline, so a camera going soft cannot drag its own
  baseline down and quietly become CLEAR again.

**The focus score** is the variance of the Laplacian at the analysis scale divided by that of the frame
downscaled 4 × (``(1 + v1) / (1 + v4)``, from :mod:`ensemble.focus`). Blur removes the finest detail first, so
the ratio falls sharply with focus loss, while exposure, gain, shading and the content of the scene (a van parked
in front, night) scale both variances alike and barely move it. The raw Laplacian variance, which is what
focus-loss scripts usually compare, drops by 75-95 % when the light fades, as much as it does for real blur
(``benchmarks/bench_cameras_focus.py`` measures both).

Nothing here prints or writes files; :mod:`ensemble.cameras.cli` does.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..focus import FOCUS_FEATURE_NAMES, UNIFORM_STD, focus_features, no_detail
from ..imageio import Decoded, ImageError, decoded_array, load_image, to_gray
from ..scan import default_workers, one_line
from ..cli_common import DEFAULT_SCALE
from .config import Camera, scrub
from .grab import Cancelled, Frame, Grab, Grabbed
from .state import CameraState

if TYPE_CHECKING:
    from ..detector import BlurDetector, BlurResult

BLACK_LEVEL = 24
"""A frame whose 99th-percentile grey level is at most this (of 255) is black: lens cap, dead sensor, no light."""


MAX_CHECK_THREADS = 256
"""At most this many cameras are checked at the same time; the rest of a very large list waits for a thread."""

_RATIO_INDEX = FOCUS_FEATURE_NAMES.index("lap_ratio_1_4")

RECORD_FIELDS = ("camera", "state", "previous", "since", "reason", "blur_probability", "focus", "baseline",
                 "change", "laplacian_var", "width", "height", "blur_kind", "blur_kind_probability", "motion_angle",
                 "blur_extent_px", "noise_sigma", "scale", "content", "frames", "url", "checked_at", "duration_s")
"""The fields of a camera record, in output order (csv header, json keys). ``scale`` and ``content`` are the scan
record's: the scale the frame was judged at ('screen' or 'native') and what it shows ('photo', 'document' or None);
both None when no frame was judged."""

KIND_FIELDS = ("blur_kind", "blur_kind_probability", "motion_angle", "blur_extent_px", "noise_sigma")
"""The fields a camera record shares with the scan record (docs/blur-kind.md)."""


@dataclass(frozen=True)
class Settings:
    """How cameras are judged, unless a camera's config says otherwise.

    ``baseline_size``: healthy checks in the baseline (its median). ``drop``: fraction (0.5 = 50 %) below the
    baseline that makes a camera DEGRADED. ``timeout``: seconds for one camera's grab. ``threshold``: blur
    probability from which a camera is BLURRY. ``confirm``: checks in a row that must agree on a new state before
    the camera's state changes (1: at once). ``workers``: frames scored at once (0: one per core). ``scale``: the
    scale frames are judged at ('screen', 'native' or 'auto'; ensemble.detector.SCALES).
    """

    baseline_size: int = 10
    drop: float = 0.5
    timeout: float = 10.0
    threshold: float = 0.5
    confirm: int = 1
    workers: int = 0
    scale: str = DEFAULT_SCALE

    @property
    def min_baseline(self) -> int:
        """Healthy checks needed before a baseline is trusted: 3 (or fewer when the baseline is smaller)."""
        return max(1, min(3, self.baseline_size))


@dataclass
class Check:
    """The outcome of one check of one camera.

    ``result``/``focus``/``grey`` describe the chosen (sharpest valid) frame; ``frame`` is that frame as grabbed
    and ``rgb`` it at the analysis scale, uint8 (H, W, 3), for the snapshot. ``new_state`` is what the camera's
    state becomes once the round is applied. ``duration`` counts seconds from the start of the round.
    """

    camera: Camera
    state: str
    reason: str
    checked_at: str
    duration: float
    previous: Optional[str] = None
    since: Optional[str] = None
    result: Optional["BlurResult"] = None
    focus: Optional[float] = None
    baseline: Optional[float] = None
    frames: int = 0
    frame: Optional[Frame] = None
    rgb: Optional[np.ndarray] = None
    new_state: Optional[CameraState] = None

    @property
    def change(self) -> Optional[float]:
        """focus / baseline - 1 (-0.6 is 60 % below the baseline), or None."""
        if self.focus is None or not self.baseline:
            return None
        return self.focus / self.baseline - 1.0

    def record(self) -> dict:
        """The report record (RECORD_FIELDS): plain JSON types, rounded; no credentials."""
        r = self.result
        change = self.change
        # The kind of blur is told for a BLURRY camera (at the camera's own threshold, not the model's); the noise
        # for every frame judged.
        scan = dict.fromkeys(KIND_FIELDS)
        if r is not None:
            scan.update(r.record())
            scan.update(_kind_fields(r) if self.state == "BLURRY" else dict.fromkeys(KIND_FIELDS[:-1]))
        return {
            "camera": self.camera.name,
            "state": self.state,
            "previous": self.previous,
            "since": self.since,
            "reason": self.reason,
            "blur_probability": None if r is None or r.blur_probability is None else round(r.blur_probability, 4),
            "focus": None if self.focus is None else round(self.focus, 4),
            "baseline": None if self.baseline is None else round(self.baseline, 4),
            "change": None if change is None else round(change, 4),
            "laplacian_var": None if r is None else round(r.laplacian_var, 2),
            "width": None if r is None else r.width,
            "height": None if r is None else r.height,
            **{k: scan[k] for k in KIND_FIELDS},
            "scale": getattr(r, "scale", None),
            "content": getattr(r, "content", None),
            "frames": self.frames,
            "url": self.camera.url,
            "checked_at": self.checked_at,
            "duration_s": round(self.duration, 3),
        }


@dataclass(frozen=True)
class Event:
    """A camera changed state (``previous`` None: first check ever)."""

    time: str
    camera: str
    previous: Optional[str]
    state: str
    reason: str
    record: dict

    def to_dict(self) -> dict:
        r = self.record
        return {"time": self.time, "camera": self.camera, "from": self.previous, "to": self.state,
                "reason": self.reason, "blur_probability": r["blur_probability"], "focus": r["focus"],
                "baseline": r["baseline"], "url": r["url"]}


@dataclass(frozen=True)
class Round:
    checks: list[Check]
    events: list[Event]
    started_at: str
    seconds: float


def _kind_fields(result: "BlurResult") -> dict:
    """The kind fields of a record, from the kind head's estimate whatever the model's own label, rounded as in
    the scan record; None where the model has no kind head."""
    est = result.kind_estimate or {}
    digits = {"blur_kind_probability": 4, "motion_angle": 1, "blur_extent_px": 2}
    return {k: (round(est[k], digits[k]) if isinstance(est.get(k), float) else est.get(k))
            for k in KIND_FIELDS[:-1]}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------------------------------------------
# Frames → scores


def focus_score(grey: np.ndarray) -> float:
    """The focus score of a uint8 (H, W) grey frame at the analysis scale: (1 + v1) / (1 + v4), where v1 and v4 are
    the variances of the Laplacian at full and quarter scale. Dimensionless; around 1-2 for a sharp scene."""
    return float(np.exp(focus_features(grey)[_RATIO_INDEX]))


def frame_problem(grey: np.ndarray) -> Optional[str]:
    """Why a grey frame is not worth judging (black, too small or uniform), or None."""
    p99 = float(np.percentile(grey, 99))
    if p99 <= BLACK_LEVEL:
        return f"black frame (99% of pixels at grey level {p99:.0f} of 255 or darker)"
    return no_detail(grey, "frame")  # too small or uniform: the rule that makes a scanned photo flat


def frame_hash(grey: np.ndarray) -> str:
    """SHA-256 of a grey frame's pixels and shape: equal only for identical pictures."""
    digest = hashlib.sha256(f"{grey.shape}".encode())
    digest.update(np.ascontiguousarray(grey).tobytes())
    return digest.hexdigest()


def decode_frame(frame: Frame, side: int, keep_full: bool = False) -> Decoded:
    """A grabbed frame as RGB at the analysis scale (``Decoded.pixels`` uint8 (H, W, 3), original width/height),
    with its full-resolution picture (:attr:`Decoded.full`, RGB or grey) when ``keep_full`` and it was reduced.

    Encoded bytes go through :func:`ensemble.imageio.load_image` (content sniffing, EXIF orientation, the pixel
    cap), from a private temporary file. Raises ImageError with a one-line reason.
    """
    if frame.pixels is not None:
        decoded = decoded_array(np.asarray(frame.pixels), side, frame.size, keep_full=keep_full)
        # A stream frame reduced on arrival brought its full-resolution grey along (Grab(keep_full=True)).
        return replace(decoded, full=frame.full) if keep_full and frame.full is not None else decoded
    fd, tmp = tempfile.mkstemp(prefix="blur-detect-frame-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(frame.data)
        return load_image(tmp, "RGB", side, native=True, keep_full=keep_full)
    finally:
        os.unlink(tmp)


@dataclass
class _Scored:
    decoded: Decoded
    grey: np.ndarray
    result: "BlurResult"
    focus: float
    problem: Optional[str]
    frame: Frame
    hash: str = ""


def keeps_full(scale: str, detector: "BlurDetector") -> bool:
    """Whether frames judged at ``scale`` must keep their full-resolution pixels: at 'native', and at 'auto' with
    a model that has a native-scale meta-network (a frame that shows a document is then judged at 100 %; without
    one, 'auto' judges every frame as on a screen, and a full-size decode would be wasted)."""
    return scale == "native" or (scale == "auto" and getattr(detector, "meta_native", None) is not None)


def score_frames(frames: list[Frame], detector: "BlurDetector", scale: str = DEFAULT_SCALE
                 ) -> tuple[Optional[_Scored], int, Optional[str]]:
    """(the sharpest usable frame, frames decoded, reason when none decoded), judged at ``scale``.

    The sharpest is the lowest blur probability, then the highest focus score; frames that are black or uniform
    are chosen only when all of them are. Where the scale may need them (:func:`keeps_full`), the frames are
    decoded with their full-resolution pixels, which the detector judges a native-scale frame on.
    """
    keep_full = keeps_full(scale, detector)
    decoded, reasons = [], []
    for frame in frames:
        try:
            decoded.append((decode_frame(frame, detector.analysis_side, keep_full), frame))
        except ImageError as err:  # the reason only: the path is a private temporary file
            reasons.append(_not_an_image(frame, one_line(err.reason)))
    if not decoded:
        return None, 0, reasons[0] if reasons else "no frame"
    greys = [to_gray(d.pixels) for d, _ in decoded]
    fulls = [None if d.full is None else to_gray(d.full) for d, _ in decoded]  # the detector judges grey
    results = detector.predict_decoded([replace(d, pixels=g, full=f) for g, f, (d, _) in zip(greys, fulls, decoded)],
                                       with_map=True, scale=scale)
    scored = [_Scored(d, g, r, focus_score(g), frame_problem(g), f)
              for g, (d, f), r in zip(greys, decoded, results)]
    usable = [s for s in scored if s.problem is None] or scored
    # A flat frame has no probability (and a problem): it sorts last.
    best = min(usable, key=lambda s: (round(_probability(s.result), 3), -s.focus))
    best.hash = frame_hash(best.grey)
    return best, len(decoded), None


def _probability(result: "BlurResult") -> float:
    return 1.0 if result.blur_probability is None else result.blur_probability


def _not_an_image(frame: Frame, reason: str) -> str:
    what = f"{frame.content_type or 'no content type'}, {len(frame.data or b'')} bytes"
    if "unrecognised content" in reason or "not an image" in reason:
        return f"no frame: the response is not an image ({what})"
    return f"no frame: {reason} ({what})"


# --------------------------------------------------------------------------------------------------------------
# Judging


def classify(problem: Optional[str], probability: float, threshold: float, focus: float,
             baseline: Optional[float], drop: float, kind: Optional[str] = None,
             angle: Optional[float] = None) -> tuple[str, str]:
    """(state, reason) of a scored frame; see the module docstring for the rules and their order. ``kind`` and
    ``angle`` (the frame's blur_kind and motion_angle, when known) name the likely cause in a BLURRY reason."""
    if problem:
        return "INVALID", problem
    if probability >= threshold:
        verdict = f"blur probability {_pct(probability)} >= threshold {_pct(threshold)}"
        return "BLURRY", f"{blur_cause(kind, angle)} ({verdict})" if kind else verdict
    if baseline is not None and baseline > 0 and focus < baseline * (1.0 - drop):
        return "DEGRADED", (f"focus {focus:.3g} is {_pct(1.0 - focus / baseline)} below the baseline "
                            f"{baseline:.3g} (limit {_pct(drop)})")
    return "CLEAR", ""


def blur_cause(kind: Optional[str], angle: Optional[float] = None) -> str:
    """What a kind of blur says about a camera: motion (with its direction on screen) is a shaking or bumped
    camera, defocus a drifted focus or a fogged lens."""
    if kind == "motion":
        at = f" at {angle:.0f}°" if angle is not None else ""
        return f"motion blur{at}: the camera is shaking or was bumped"
    return "defocus: focus drifted or the lens is fogged"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}".rstrip("0").rstrip(".") + "%"


class Monitor:
    """Checks ``cameras`` in rounds and keeps their ``states`` (by camera name; updated after each round).

    ``detector`` is shared by all checks; load it with ``threads=1`` (checks run side by side, at most
    ``settings.workers`` frames scored at once).
    """

    def __init__(self, cameras: list[Camera], detector: "BlurDetector", states: dict[str, CameraState],
                 settings: Settings):
        self.detector, self.states, self.settings = detector, states, settings
        self._scoring = threading.BoundedSemaphore(settings.workers or default_workers())
        self._hung: dict[str, Grab] = {}  # grabs still running past their deadline, by camera
        self.set_cameras(cameras)

    def set_cameras(self, cameras: list[Camera]) -> None:
        """Check ``cameras`` from the next round on (a reloaded config). States stay keyed by name, so a camera
        kept keeps its baseline, unless its url changed."""
        self.cameras = cameras
        self._secrets = {c.name: c.secrets() for c in cameras}

    def scale_of(self, camera: Camera) -> str:
        """The scale ``camera``'s frames are judged at: its own ``scale``, else the settings'."""
        return camera.scale or self.settings.scale

    def reset_baseline(self, names: list[str]) -> None:
        """Forget the baseline of the cameras named (after a camera was refocused or moved on purpose)."""
        for name in names:
            if name in self.states:
                self.states[name].history = []

    def run_round(self, cancel: Optional[threading.Event] = None,
                  on_check: Optional[Callable[[Check], None]] = None) -> Round:
        """Check every camera at once; apply the new states; return the checks (config order) and the events.

        One camera's grab never waits for another's: each has its own thread and deadline. ``on_check(check)`` runs
        in the checking thread as each check ends (to write its snapshot); it must not raise. When ``cancel`` is
        set the round stops within about 0.1 s and raises :class:`Cancelled`, and no state is changed.
        """
        started, started_at = time.monotonic(), utc_now()
        cancel = cancel or threading.Event()  # set on the way out of an interrupted round, to free its threads
        workers = max(1, min(len(self.cameras), MAX_CHECK_THREADS))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camera-check")
        try:
            futures = [pool.submit(self._check, camera, started, cancel, on_check) for camera in self.cameras]
            checks = [f.result() for f in futures]
        except BaseException:
            cancel.set()  # the other checks stop waiting for their frames
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        events = []
        for check in checks:
            self.states[check.camera.name] = check.new_state
            if check.previous != check.state:
                events.append(Event(check.checked_at, check.camera.name, check.previous, check.state,
                                    check.reason, check.record()))
        return Round(checks, events, started_at, time.monotonic() - started)

    # -- one camera ---------------------------------------------------------------------------------------------
    def _check(self, camera: Camera, started: float, cancel, on_check) -> Check:
        old = self.states.get(camera.name) or CameraState()
        if old.url != camera.url:
            # A new camera, or one pointed somewhere else: its old baseline and last frame mean nothing now.
            old = CameraState(state=old.state, since=old.since, url=camera.url)
        checked_at = utc_now()
        try:
            state, reason, scored, n_frames, position = self._grab_and_judge(camera, old, cancel)
        except Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - one camera's surprise never stops the round
            state, reason, scored, n_frames, position = (
                "UNREACHABLE", f"unexpected error: {type(err).__name__}: {one_line(err)}", None, 0, None)
        reason = scrub(reason, self._secrets[camera.name])
        baseline = old.baseline(self.settings.baseline_size, self.settings.min_baseline)

        new = replace(old, history=list(old.history), checked=checked_at, reason=reason)
        if scored is not None:
            new.frame_hash = scored.hash
        if position is not None:
            new.position = position
        if state == "CLEAR" and scored is not None:
            new.history = (new.history + [scored.focus])[-self.settings.baseline_size:]
            if baseline is None:
                have = len(new.history)
                need = self.settings.min_baseline
                reason = new.reason = ("baseline learnt" if have >= need else
                                       f"learning the baseline ({have} of {need} checks)")
                if have >= need:  # shown from this check on, as the reason says
                    baseline = new.baseline(self.settings.baseline_size, self.settings.min_baseline)
        state, reason = self._debounce(camera, old, new, state, reason)
        if old.state != state:
            new.state, new.since = state, checked_at

        check = Check(
            camera=camera, state=state, reason=reason, checked_at=checked_at,
            duration=time.monotonic() - started, previous=old.state, since=new.since,
            result=scored.result if scored else None, focus=scored.focus if scored else None, baseline=baseline,
            frames=n_frames, frame=scored.frame if scored else None, rgb=scored.decoded.pixels if scored else None,
            new_state=new,
        )
        if on_check is not None:
            try:
                on_check(check)
            except Exception:  # noqa: BLE001 - the caller reports its own failures; the check stands
                pass
        return check

    def _debounce(self, camera: Camera, old: CameraState, new: CameraState, found: str, reason: str
                  ) -> tuple[str, str]:
        """The state to report for a check that ``found`` a state, and its reason; updates ``new.pending``.

        A new state is reported once ``confirm`` checks in a row have found it, so a camera that flaps between two
        states does not raise an alarm each time. Until then the old state stands, and the reason says what is
        pending. A camera's first check is reported as found.
        """
        confirm = camera.confirm or self.settings.confirm
        new.pending, new.pending_count = None, 0
        if old.state is None or found == old.state or confirm <= 1:
            return found, reason
        count = old.pending_count + 1 if old.pending == found else 1
        if count >= confirm:
            return found, reason
        new.pending, new.pending_count = found, count
        new.reason = f"{found} in {count} of {confirm} checks" + (f": {reason}" if reason else "")
        return old.state, new.reason

    def _grab_and_judge(self, camera: Camera, old: CameraState, cancel):
        """(state, reason, scored frame or None, frames decoded, video file position or None)."""
        timeout = camera.timeout or self.settings.timeout
        deadline = time.monotonic() + timeout
        hung = self._hung.get(camera.name)
        while hung is not None and hung.thread.is_alive() and time.monotonic() < deadline:
            # The last grab overran its deadline and is still going: give it this check's time to finish. Threads
            # are never stacked on one camera, so at most one per camera is ever left behind.
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            hung.thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        if hung is not None and hung.thread.is_alive():
            return "UNREACHABLE", "timeout: the previous check's grab has still not returned", None, 0, None
        scale = self.scale_of(camera)
        grab = Grab(camera, timeout, old.position if camera.is_file else None, deadline=deadline,
                    side=self.detector.analysis_side, keep_full=keeps_full(scale, self.detector))
        grabbed: Grabbed = grab.wait(cancel)
        if grab.thread.is_alive():
            self._hung[camera.name] = grab
        else:
            self._hung.pop(camera.name, None)
        if grabbed.error is not None:
            return "UNREACHABLE", grabbed.error, None, 0, grabbed.position
        with self._scoring:
            best, n_frames, why = score_frames(grabbed.frames, self.detector, scale)
        if best is None:
            return "UNREACHABLE", why, None, 0, grabbed.position
        problem = best.problem  # frame_problem applies the scan's 'flat' rule too: a flat frame is INVALID
        if problem is None and old.frame_hash is not None and best.hash == old.frame_hash:
            problem = "frozen: the picture is identical to the previous check's"
        threshold = camera.threshold if camera.threshold is not None else self.settings.threshold
        drop = camera.drop if camera.drop is not None else self.settings.drop
        baseline = old.baseline(self.settings.baseline_size, self.settings.min_baseline)
        est = best.result.kind_estimate or {}
        state, reason = classify(problem, best.result.blur_probability, threshold, best.focus, baseline, drop,
                                 est.get("blur_kind"), est.get("motion_angle"))
        return state, reason, best, n_frames, grabbed.position


def exit_status(checks: list[Check]) -> int:
    """0 all CLEAR; 1 some DEGRADED, BLURRY or INVALID; 2 some UNREACHABLE (it wins over 1)."""
    states = {c.state for c in checks}
    if "UNREACHABLE" in states:
        return 2
    if states & {"DEGRADED", "BLURRY", "INVALID"}:
        return 1
    return 0


__all__ = ["BLACK_LEVEL", "Check", "Event", "KIND_FIELDS", "Monitor", "RECORD_FIELDS", "Round", "Settings",
           "UNIFORM_STD", "blur_cause", "classify", "decode_frame", "exit_status", "focus_score", "frame_hash",
           "frame_problem", "keeps_full", "score_frames", "utc_now"]
