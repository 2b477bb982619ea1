"""The review page's HTTP side: :class:`ReviewService` gives the FastAPI router that ``blur-detect serve`` mounts.

Routes (the server puts its authentication in front of every ``/api`` route; the page calls them same-origin):

=========================================  =========================================================================
``GET /``                                  the page; ``GET /review/static/{name}`` its script, style and icon
``GET /api/review/status``                 scan progress, the threshold, the uncertain band, the scale photos are
                                           judged at, whether undo is possible
``GET /api/review/results?since=&epoch=``  photos changed since a poll (all of them at first), blurriest first
``GET /api/review/thumb?path=&v=``         cached JPEG thumbnail
``GET /api/review/image?path=``            the photo itself (or a JPEG of it for formats browsers cannot show)
``GET /api/review/overlay?path=``          the photo with its blur map over it
``PUT /api/review/override``               ``{"path", "decision": "keep" | "reject" | null}``
``PUT /api/review/threshold``              ``{"threshold": 0-1 | null}`` (saved for the next visit and for Apply)
``GET /api/review/plan?threshold=``        what Apply would move, and why
``POST /api/review/apply``                 ``{"threshold", "paths"}``: moves the listed photos still rejected
``POST /api/review/undo``                  puts back the files of the last apply
``POST /api/review/rescan``                lists the folder again
=========================================  =========================================================================

Every ``path`` is the photo's path below the root as the results gave it; it is checked by
:func:`ensemble.review.paths.client_path` (no absolute paths, no ``..``, nothing that resolves outside the root,
symbolic links included) and must name a photo the scan listed. Errors are JSON ``{"detail": "one line"}``: 400 bad
path, 404 unknown photo, 409 conflict (not scored yet, nothing to undo, an apply already running), 422 unreadable
image or bad body, 403 a cross-site request to a route that changes something.
"""
from __future__ import annotations

import json
import math
import secrets
import threading
from pathlib import Path
from typing import Callable, Literal, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from ..cli_common import DEFAULT_SCALE
from ..detector import check_scale
from ..imageio import ImageError
from ..server.auth import same_origin  # the server's one cross-site check, so this router is safe on its own too
from . import actions
from .decisions import UNCERTAIN_BAND, rejected, verdict
from .lock import RootInUse, RootLock
from .paths import CACHE_DIR, DEST_DIR, MAX_KEY, STATE_FILE, BadPath, client_path
from .pictures import Picture, Pictures
from .results import Entry, Results, order_key
from .scanner import Scanner
from .state import ReviewState, StateError

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
"""The only files ``/review/static/`` serves, with their media types."""

PAGE_HEADERS = {
    # The page loads nothing but its own script, style and the API's pictures, and cannot be framed.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

DEFAULT_THRESHOLD = 0.5  # until the scan has the model's own


class OverrideBody(BaseModel):
    path: str = Field(min_length=1, max_length=MAX_KEY, description="photo path below the folder")
    decision: Optional[Literal["keep", "reject"]] = Field(None, description="null clears the override")


class ThresholdBody(BaseModel):
    threshold: Optional[float] = Field(None, ge=0.0, le=1.0, description="null: the model's own threshold")


class ApplyBody(BaseModel):
    threshold: float = Field(ge=0.0, le=1.0, description="the threshold the plan was made with")
    paths: list[str] = Field(max_length=1_000_000, description="the photos of the plan the user confirmed")


class ReviewService:
    """Review of the photos under ``root``: background scan, pictures, overrides, apply and undo.

    ``get_detector()`` returns the :class:`~ensemble.detector.BlurDetector` to use; it is called for every batch,
    so a model switched in the server is picked up. ``workers`` scoring threads (0: one per core). ``scale``: what
    the photos are judged at, 'screen', 'native' or 'auto' (ensemble.detector.SCALES; ``serve --scale``); a score
    made at another scale is not taken from the cache. Call :meth:`start` once the server runs and :meth:`stop`
    when it shuts down.

    The service holds the root's lock (:mod:`ensemble.review.lock`) from its creation to :meth:`stop`, so a second
    service on the same folder, in this process or another, raises :class:`RootInUse` instead of overwriting the
    first one's decisions.
    """

    def __init__(self, root: str | Path, get_detector: Callable[[], object], *, workers: int = 0,
                 batch: int = 16, scale: str = DEFAULT_SCALE):
        check_scale(scale)
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder")
        self.root = root
        self.scale = scale
        self._lock = RootLock(root)
        self._lock.acquire()  # before the state is read: another server may be about to rewrite it
        try:
            self.cache_dir = root / CACHE_DIR
            self.results = Results(self.cache_dir)
            self.state = ReviewState(root)
            self.pictures = Pictures(self.cache_dir)
            self.scanner = Scanner(root, self.results, get_detector, workers, batch, scale)
        except BaseException:
            self._lock.release()
            raise
        self.epoch = secrets.token_hex(6)  # changes on restart, telling the page to drop what it holds
        self._busy = threading.Lock()  # one apply or undo at a time
        self._work: Optional[dict] = None  # the running apply's or undo's progress, for status()
        self.router = self._build_router()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin the background scan; returns at once. Takes the root's lock again after a :meth:`stop`."""
        self._lock.acquire()
        self.scanner.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the scan promptly; True when its thread has ended, and then the root's lock is released."""
        stopped = self.scanner.stop(timeout)
        if stopped:  # a scan thread still running may still write the cache: keep the folder ours until exit
            self._lock.release()
        return stopped

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every photo is scored (for tests and benchmarks); True if it happened in time."""
        return self.scanner.wait_idle(timeout)

    # -- views of the state ------------------------------------------------------------------------------------
    def status(self) -> dict:
        """Progress (``total``, ``done``, ``errors``, ``pending`` photos; ``phase``, ``rate`` in photos/s, ``eta_s``),
        the ``threshold`` in use (saved, else the model's), the uncertain ``band``, the ``scale`` photos are judged
        at (as asked: 'auto' stays 'auto'; each photo says what it resolved to), how many applies
        ``undo_available`` can still undo, and ``work``: ``{"verb": "move" | "restore", "done", "total"}`` files
        while an apply or undo runs, else None."""
        scan = self.scanner.status()
        overrides, saved, journals = self.state.snapshot()
        counts = self.results.counts(scan["model"])
        rate = scan["rate"]
        eta = round(counts["pending"] / rate) if rate and scan["phase"] == "scoring" else None
        return {
            "root": str(self.root),
            "name": self.root.name or str(self.root),
            **counts,
            "phase": scan["phase"],
            "error": scan["error"],
            "rate": rate,
            "eta_s": eta,
            "model_threshold": scan["threshold"],
            "threshold": self._threshold(saved, scan),
            "threshold_saved": saved is not None,
            "band": UNCERTAIN_BAND,
            "scale": self.scale,
            "dest": DEST_DIR,
            "overrides": len(overrides),
            "undo_available": len(journals),
            "busy": self._busy.locked(),
            "work": self._work,
        }

    def _follow(self, verb: str) -> actions.Progress:
        """The callback that publishes an apply's or undo's progress in :meth:`status`."""
        def progress(done: int, total: int) -> None:
            self._work = {"verb": verb, "done": done, "total": total}
        return progress

    def _threshold(self, saved: Optional[float], scan: Optional[dict] = None) -> float:
        if saved is not None:
            return saved
        model = (scan or self.scanner.status())["threshold"]
        return DEFAULT_THRESHOLD if model is None else model

    def plan(self, threshold: float) -> dict:
        """What Apply would move at ``threshold``: the photos with the reason, and how many stay despite a
        blurry-looking score (uncertain, or marked keep)."""
        overrides, _, _ = self.state.snapshot()
        photos = sorted(self.results.live(), key=order_key)
        moves = rejected(((e.key, e.p) for e in photos), overrides, threshold)
        uncertain = sum(1 for e in photos if overrides.get(e.key) is None and verdict(e.p, threshold) == "uncertain")
        kept = sum(1 for e in photos if overrides.get(e.key) == "keep" and verdict(e.p, threshold) == "blurry")
        return {"threshold": threshold, "band": UNCERTAIN_BAND, "dest": DEST_DIR,
                "items": [{"path": r.key, "reason": r.reason, "p": r.p} for r in moves],
                "uncertain_staying": uncertain, "kept_blurry": kept}

    # -- helpers -----------------------------------------------------------------------------------------------
    def _photo(self, key: str) -> tuple[Entry, Path]:
        """The entry and resolved file of a key from the page, or the HTTP error."""
        try:
            file = client_path(self.root, key)
        except BadPath as err:
            raise HTTPException(400, str(err)) from None
        entry = self.results.get(key)
        if entry is None:
            raise HTTPException(404, "not a photo of this review")
        if entry.final:
            raise HTTPException(422, entry.error)
        return entry, file

    @staticmethod
    def _draw(make: Callable[[Entry, Path], Picture], entry: Entry, file: Path) -> Picture:
        try:
            return make(entry, file)
        except ImageError as err:  # the reason only: the client never sees the server's paths
            raise HTTPException(422, err.reason) from None
        except MemoryError:
            raise HTTPException(422, "out of memory while decoding") from None
        except OSError as err:
            raise HTTPException(404, f"cannot read: {(err.strerror or str(err)).lower()}") from None

    @staticmethod
    def _send(picture: Picture, cache: str) -> Response:
        headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        if picture.file is not None:
            return FileResponse(picture.file, media_type=picture.media_type, headers=headers,
                                content_disposition_type="inline")
        return Response(picture.data, media_type=picture.media_type, headers=headers)

    def _save(self, change: Callable[[], None]) -> None:
        try:
            change()
        except StateError as err:
            raise HTTPException(500, str(err)) from None

    # -- routes ------------------------------------------------------------------------------------------------
    def _build_router(self) -> APIRouter:
        router = APIRouter(tags=["review"])
        changes = [Depends(same_origin)]

        @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        def page() -> Response:
            return Response((STATIC_DIR / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                            headers=PAGE_HEADERS)

        @router.get("/review/static/{name}", include_in_schema=False)
        def static(name: str) -> Response:
            media = STATIC_TYPES.get(name)
            if media is None:
                raise HTTPException(404, "no such file")
            return Response((STATIC_DIR / name).read_bytes(), media_type=media,
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

        @router.get("/api/review/status", summary="Scan progress and review settings")
        def status() -> dict:
            return self.status()

        @router.get("/api/review/results", summary="Photos changed since a poll, blurriest first")
        def results(since: int = Query(0, ge=0, le=2**53, description="the 'seq' of the previous answer"),
                    epoch: str = Query("", max_length=64, description="the 'epoch' of the previous answer")
                    ) -> Response:
            if epoch != self.epoch:
                since = 0  # the server restarted: send everything afresh
            seq, changed = self.results.changes(since)
            overrides, _, _ = self.state.snapshot()
            items = [dict(e.public(), o=overrides.get(e.key)) for e in changed if since or not e.gone]
            body = {"epoch": self.epoch, "reset": since == 0, "seq": seq, "items": items, "status": self.status()}
            # Serialised directly: a full answer holds thousands of items.
            return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

        @router.get("/api/review/thumb", summary="Thumbnail (JPEG)", response_class=Response,
                    responses={200: {"content": {"image/jpeg": {}}}})
        def thumb(path: str = Query(max_length=MAX_KEY), v: str = Query("", max_length=64)) -> Response:
            entry, file = self._photo(path)
            picture = self._draw(self.pictures.thumbnail, entry, file)
            # The page asks with the file's version in the URL, so the browser may keep it for good.
            return self._send(picture, "private, max-age=604800, immutable" if v == entry.version else "no-cache")

        @router.get("/api/review/image", summary="The photo at full size", response_class=Response,
                    responses={200: {"content": {"image/*": {}}}})
        def image(path: str = Query(max_length=MAX_KEY)) -> Response:
            entry, file = self._photo(path)
            return self._send(self._draw(self.pictures.original, entry, file), "private, no-cache")

        @router.get("/api/review/overlay", summary="The photo with its blur map (JPEG)", response_class=Response,
                    responses={200: {"content": {"image/jpeg": {}}}})
        def overlay(path: str = Query(max_length=MAX_KEY)) -> Response:
            entry, file = self._photo(path)
            if not entry.scored:
                raise HTTPException(422 if entry.error else 409, entry.error or "not scored yet")
            return self._send(self._draw(self.pictures.overlay, entry, file), "private, no-cache")

        @router.put("/api/review/override", dependencies=changes, summary="Keep, reject or clear a photo")
        def override(body: OverrideBody) -> dict:
            self._photo(body.path)
            self._save(lambda: self.state.set_override(body.path, body.decision))
            self.results.touch([body.path])  # other open pages see it at their next poll
            return {"path": body.path, "decision": body.decision}

        @router.put("/api/review/threshold", dependencies=changes, summary="Save the threshold slider")
        def threshold(body: ThresholdBody) -> dict:
            self._save(lambda: self.state.set_threshold(body.threshold))
            return {"threshold": self._threshold(body.threshold)}

        @router.get("/api/review/plan", summary="What Apply would move")
        def plan(threshold: Optional[float] = Query(None, ge=0.0, le=1.0)) -> dict:
            if threshold is None or not math.isfinite(threshold):
                threshold = self._threshold(self.state.snapshot()[1])
            return self.plan(threshold)

        @router.post("/api/review/apply", dependencies=changes, summary="Move the confirmed rejected photos")
        def apply(body: ApplyBody) -> dict:
            if not self._busy.acquire(blocking=False):
                raise HTTPException(409, "an apply or undo is already running")
            try:
                confirmed = set(body.paths)
                keys = [item["path"] for item in self.plan(body.threshold)["items"] if item["path"] in confirmed]
                files = []
                for key in keys:
                    try:
                        entry, _ = self._photo(key)  # confined like every other path
                    except HTTPException:
                        continue  # gone or changed since the plan: left out, counted in not_moved
                    files.append(Path(entry.path))  # the listed path: a link is refused by sorting, not followed
                report = actions.apply(self.root, files, self._follow("move"))
                self.results.remove(src for src, _ in report.done)
                if report.journal:
                    self._save(lambda: self.state.push_journal(report.journal))
                return {**report.as_dict(), "not_moved": len(confirmed) - len(files)}
            finally:
                self._work = None
                self._busy.release()

        @router.post("/api/review/undo", dependencies=changes, summary="Put back the files of the last apply")
        def undo() -> dict:
            if not self._busy.acquire(blocking=False):
                raise HTTPException(409, "an apply or undo is already running")
            try:
                journals = self.state.snapshot()[2]
                if not journals:
                    raise HTTPException(409, "nothing to undo")
                report, settled = actions.undo_journal(self.root, journals[-1], self._follow("restore"))
                if settled:
                    self._save(lambda: self.state.drop_journal(journals[-1]))
                self.scanner.rescan()  # the restored photos come back into the grid
                return {**report.as_dict(), "settled": settled, "undo_available": len(journals) - settled}
            finally:
                self._work = None
                self._busy.release()

        @router.post("/api/review/rescan", dependencies=changes, status_code=202, summary="List the folder again")
        def rescan() -> dict:
            self.scanner.rescan()
            return {"rescanning": True}

        return router


__all__ = ["ReviewService", "RootInUse", "STATE_FILE", "same_origin"]
