"""The FastAPI application of ``blur-detect serve``: prediction, the model registry, training jobs, health.

    create_app(ServerSettings(...)) -> FastAPI

Routes (every ``/api`` route needs the token when there is one; see :mod:`ensemble.server.auth`):

    POST   /api/predict                  multipart images (and optionally ``scale``) -> one scan record each (the
                                         CLI's record fields)
    GET    /api/models                   the shipped model and the service's, with metadata; which is active
    GET    /api/models/{name}            one of them
    POST   /api/models/{name}/activate   serve predictions with it from now on (no restart, no failed request)
    POST   /api/models/train             start a training run (202); 409 while one is running
    GET    /api/jobs                     the runs kept, newest first
    GET    /api/jobs/{id}                status, stage, progress %, log tail, metrics
    DELETE /api/jobs/{id}                cancel a run
    GET    /healthz                      liveness, the model being served, the device it runs on, the scale
    GET    /                             a page pointing to /docs, or the review page with --root

Errors are JSON ``{"detail": "one line"}``: 401 no token, 403 a state-changing request from another site (any
method but GET/HEAD/OPTIONS; see :func:`ensemble.server.auth.cross_site`), 404 unknown, 408 a request body that
stopped coming (:mod:`ensemble.server.timeouts`), 409 conflict, 413 too large, 415 not an image, 422 malformed
request, 500 a bug (logged on the server in one line, never a traceback to the client).
Scoring runs on worker threads (``scoring_threads`` at once) with one shared detector whose ONNX sessions are
single-threaded, as in ``blur-detect scan``; TensorFlow is never imported in the server process.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..cli_common import DEFAULT_SCALE, SCALES, native_problem
from ..detector import check_scale
from .auth import AuthMiddleware, check_token, is_loopback
from .errors import ServiceError
from .jobs import JobManager
from .models import NAME_PATTERN, ModelError, ModelRegistry
from .timeouts import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, MIN_UPLOAD_RATE, BodyTimeout
from .uploads import receive_uploads

log = logging.getLogger("ensemble.server")

SETTINGS_ENV = "BLUR_DETECT_SERVE_SETTINGS"
"""Environment variable carrying the settings (JSON) to the worker processes of ``--workers N``."""

MB = 2**20


def default_models_dir() -> Path:
    """Where models trained through the service go: $XDG_DATA_HOME/blur-ensemble/models (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "blur-ensemble" / "models"


def default_data_roots() -> tuple[Path, ...]:
    """The project's shared datasets folder (``../shared/datasets`` beside the repository) when it exists."""
    from ..datasets import DEFAULT_DATA

    return (DEFAULT_DATA.parent,) if DEFAULT_DATA.parent.is_dir() else ()


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``blur-detect serve`` was asked for.

    ``token``: required on /api routes when set (and the server refuses to run without one on a non-loopback
    ``host``). ``models_dir``: models trained through the service, and active.json. ``root``: the folder the
    review page shows (None: no review page). ``data_roots``: the folders training data must lie in.
    ``max_upload_bytes``: per file; ``max_files``: per request. ``scoring_threads``: images scored at once
    (0: one per core). ``trusted_hosts``: Host header names accepted (None: any). ``shipped_model``: folder of the
    shipped model (None: the default one). ``header_timeout``: seconds a request's line and headers may take in
    all; ``body_timeout``: seconds of waiting for more of a body; ``min_upload_rate``: bytes/s a body must average
    (see :mod:`ensemble.server.timeouts`; the header timer needs the server, ``blur-detect serve``, not the app).
    ``device``: where the CNN runs, 'auto', 'cpu' or 'cuda' (BlurDetector.load). ``scale``: what images are
    judged at, 'screen', 'native' or 'auto' (ensemble.detector.SCALES): an upload unless its request says
    otherwise (the form field ``scale``), and every photo of the review page.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token: Optional[str] = None
    models_dir: Path = field(default_factory=default_models_dir)
    root: Optional[Path] = None
    data_roots: tuple[Path, ...] = field(default_factory=default_data_roots)
    max_upload_bytes: int = 50 * MB
    max_files: int = 32
    scoring_threads: int = 0
    trusted_hosts: Optional[tuple[str, ...]] = None
    shipped_model: Optional[Path] = None
    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    min_upload_rate: float = MIN_UPLOAD_RATE
    device: str = "cpu"
    mlflow_uri: Optional[str] = None
    """Track every training job in this MLflow store (``serve --mlflow``, docs/tracking.md); None: no tracking."""
    scale: str = DEFAULT_SCALE

    def __post_init__(self):
        check_scale(self.scale)

    @property
    def auth_required(self) -> bool:
        return self.token is not None or not is_loopback(self.host)

    def to_env(self) -> str:
        """JSON for :data:`SETTINGS_ENV`."""
        return json.dumps({k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "data_roots" else v)
                           for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls, text: str) -> "ServerSettings":
        raw = json.loads(text)
        paths = {"models_dir", "root", "shipped_model"}
        values = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v = raw[f.name]
            if f.name in paths:
                v = Path(v) if v is not None else None
            elif f.name == "data_roots":
                v = tuple(Path(x) for x in v)
            elif f.name == "trusted_hosts" and v is not None:
                v = tuple(v)
            values[f.name] = v
        return cls(**values)


# --------------------------------------------------------------------------------------------------------------
# Schemas (they make /openapi.json and /docs)


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, in one line")


class Record(BaseModel):
    """One image's verdict: the fields of a ``blur-detect scan`` record."""

    path: str = Field(description="the uploaded file's name (directory parts and control characters removed)")
    label: Literal["sharp", "blurry", "flat", "error"]
    blur_probability: Optional[float] = Field(description="calibrated P(blurry), 0-1; null on error or when flat")
    laplacian_var: Optional[float] = Field(description="variance of the Laplacian at the analysis scale")
    width: Optional[int] = Field(description="original width in pixels")
    height: Optional[int] = Field(description="original height in pixels")
    error: Optional[str] = Field(description="null, or why the image could not be scored (one line)")
    scale: Optional[Literal["screen", "native"]] = Field(
        None, description="the scale it was judged at ('auto' resolves to one of them); null on error")
    content: Optional[Literal["photo", "document"]] = Field(
        None, description="what it shows; null on error, when flat, or for a model without a content classifier")


class ModelInfo(BaseModel):
    name: str
    active: bool
    shipped: bool
    created: Optional[str] = None
    threshold: Optional[float] = None
    job: Optional[str] = Field(None, description="the training job that made it (service-trained models)")
    data: dict[str, Any] = Field(description="dataset layout and source, image counts")
    hyperparameters: dict[str, Any]
    epochs_run: dict[str, Any]
    metrics: dict[str, Any] = Field(description="'validation' (cross-validated) and 'test' (held-out scenes) metrics")
    error: Optional[str] = Field(None, description="why the model cannot be used, if it cannot")


class ModelList(BaseModel):
    active: str
    scale: Literal["screen", "native", "auto"] = Field(
        description="the scale /api/predict judges at when a request does not say (serve --scale)")
    models: list[ModelInfo]


class TrainRequest(BaseModel):
    """A training run on a dataset on the server's disk (inside the allowed data roots)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, max_length=4096,
                      description="dataset folder or CSV, relative to an allowed data root or absolute inside one")
    layout: Optional[Literal["csv", "folders", "certh-train"]] = Field(None, description="default: detected")
    name: Optional[str] = Field(None, pattern=NAME_PATTERN, description="model name (default: model-<date-time>)")
    epochs: int = Field(14, ge=1, le=500, description="CNN epochs at most (early stopping may end sooner)")
    patch_size: int = Field(96, ge=32, le=256, description="side of the CNN's square patches, in pixels")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the scene split and of training")
    patches_per_image: int = Field(16, ge=1, le=256)
    batch_size: int = Field(128, ge=8, le=2048)
    patience: int = Field(5, ge=1, le=500, description="CNN early-stopping patience, in epochs")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of scenes held out for the test metrics")
    meta_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                 description="share of training scenes kept from the CNN so that the meta-network's "
                                             "validation figures are honest (CNN.py --meta-fraction; 0: the CNN "
                                             "trains on every training photo)")
    meta_members: int = Field(5, ge=1, le=20,
                              description="meta-networks averaged (train.py --members; fewer is faster)")
    meta_folds: int = Field(5, ge=2, le=20, description="scene-grouped cross-validation folds of the meta-network")
    meta_max_epochs: int = Field(400, ge=1, le=5000)
    meta_patience: int = Field(40, ge=1, le=5000)


class JobInfo(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str
    progress: float = Field(description="0-100 %")
    model: str = Field(description="name the model gets when the run succeeds")
    params: dict[str, Any]
    images: Optional[int] = None
    created: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    error: Optional[str] = None
    metrics: Optional[dict[str, Any]] = None
    log_tail: list[str]


class Health(BaseModel):
    status: str
    model: str
    version: str
    device: Literal["cpu", "cuda"] = Field(description="where the model's CNN runs")
    device_detail: Optional[str] = Field(None, description="the GPU's name on cuda; on cpu, why not a GPU when "
                                                           "--device auto found none (else null)")
    scale: Literal["screen", "native", "auto"] = Field(
        description="the scale /api/predict (and the review page) judges at when a request does not say "
                    "(serve --scale)")
    native: bool = Field(description="whether the model being served can judge at native scale (it has a "
                                     "native-scale meta-network, final_model/meta_native.onnx)")


def _errors(*codes: int) -> dict:
    text = {401: "token missing or wrong", 403: "a cross-site request, or a data path outside the allowed roots",
            404: "not found", 408: "the request body stopped coming", 409: "conflict", 413: "too large",
            415: "not an image", 422: "malformed request", 503: "busy or not ready"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "the images (JPEG, PNG, TIFF, BMP, WebP, HEIC); sniffed from the bytes"},
                   "scale": {"type": "string", "enum": list(SCALES),
                             "description": "the scale the images are judged at: screen (the short side at 640 px, "
                                            "as on a screen), native (at their own resolution, as at 100 %; needs a "
                                            "model with a native-scale meta-network), auto (native for documents, "
                                            "screen for photos); default: the server's (serve --scale, see "
                                            "/healthz)"}},
}}}}}

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blur Ensemble</title>
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}code{background:#eee}</style>
</head><body>
<h1>Blur Ensemble</h1>
<p>Finds blurry and out-of-focus photos. This is its HTTP service.</p>
<ul>
<li><a href="/docs">API documentation</a> (try every route from the browser), or the raw
<a href="/openapi.json">OpenAPI spec</a></li>
<li><a href="/healthz">/healthz</a></li>
</ul>
<form action="/api/predict" method="post" enctype="multipart/form-data">
<p><input type="file" name="files" accept="image/*" multiple> <button>Score</button></p>
</form>
<p>From a program: <code>curl -F files=@photo.jpg http://HOST:PORT/api/predict</code>
(add <code>-F scale=native</code> to judge it at its own resolution)</p>
</body></html>
"""


# --------------------------------------------------------------------------------------------------------------
# The application


def create_app(settings: Optional[ServerSettings] = None) -> FastAPI:
    """The service for ``settings``; models load at start-up (the lifespan), training runs in child processes."""
    from ..cli import _clean, error_record
    from ..scan import default_workers, score_one

    settings = settings or ServerSettings()
    if settings.token is not None:
        check_token(settings.token)
    elif settings.auth_required:
        raise ValueError(f"a token is required to serve on {settings.host}, which is not a loopback address")
    registry = ModelRegistry(settings.models_dir, settings.shipped_model, threads=1, device=settings.device)
    jobs = JobManager(settings.models_dir, settings.data_roots, registry.exists, mlflow_uri=settings.mlflow_uri)
    review = None
    if settings.root is not None:
        from ..review.service import ReviewService

        review = ReviewService(root=settings.root, get_detector=registry.detector, scale=settings.scale)
    limiter = {}  # created on first use, inside the event loop

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(registry.current)  # load the active model before the first request
        if review is not None:
            review.start()
        try:
            yield
        finally:
            if review is not None:
                review.stop()
            await run_in_threadpool(jobs.shutdown)

    app = FastAPI(title="Blur Ensemble", version=__version__, lifespan=lifespan,
                  description="Find blurry photos: predict, list and activate models, train and follow jobs. "
                              "Errors are JSON {\"detail\": \"one line\"}.")
    app.state.settings, app.state.registry, app.state.jobs, app.state.review = settings, registry, jobs, review
    # Documents the bearer scheme for /docs ("Authorize"); the AuthMiddleware is what enforces it.
    bearer = [Depends(HTTPBearer(auto_error=False))] if settings.auth_required else []
    api = APIRouter(prefix="/api", dependencies=bearer, responses=_errors(401) if settings.auth_required else {})

    # -- prediction ---------------------------------------------------------------------------------------------
    @api.post("/predict", response_model=list[Record], tags=["predict"], openapi_extra=PREDICT_BODY,
              responses=_errors(403, 408, 413, 415, 422),
              summary="Score uploaded images for blur",
              description=f"Multipart upload of one or more images in the field `files` (at most {settings.max_files}"
                          f" files, {settings.max_upload_bytes / MB:g} MB each), and optionally the text field "
                          f"`scale` (screen, native or auto; default: {settings.scale}, the server's). Returns one "
                          "record per file, in order. A file that is an image but cannot be decoded is an error "
                          "record; the others are still scored. The `X-Blur-Model` header names the model that "
                          "scored them, `X-Blur-Scale` the scale asked. 422 for `scale=native` with a model that "
                          "has no native-scale meta-network.")
    async def predict(request: Request) -> Response:
        import anyio
        from starlette.concurrency import run_in_threadpool

        name, detector = await run_in_threadpool(registry.current)  # this request keeps this model to the end
        if "limiter" not in limiter:
            limiter["limiter"] = anyio.CapacityLimiter(settings.scoring_threads or default_workers())
        folder = tempfile.mkdtemp(prefix="blur-detect-upload-")
        form: dict[str, str] = {}
        try:
            uploads = await receive_uploads(request.headers.get("content-type", ""),
                                            request.headers.get("content-length"), request.stream(), folder,
                                            settings.max_upload_bytes, settings.max_files, form)
            scale = form.get("scale", settings.scale)
            problem = (native_problem(detector, "scale 'native'", f"the model {name!r}") if scale == "native"
                       else None)
            if problem:
                raise ServiceError(422, problem)
            scanned = await asyncio.gather(*(
                anyio.to_thread.run_sync(score_one, detector, str(u.path), False, scale, limiter=limiter["limiter"])
                for u in uploads))
        except ClientDisconnect:
            return Response(status_code=400)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        records = [_clean(s.result.record(u.name) if s.error is None else error_record(u.name, s.error))
                   for u, s in zip(uploads, scanned)]
        return JSONResponse(records, headers={"X-Blur-Model": name, "X-Blur-Scale": scale})

    # -- models -------------------------------------------------------------------------------------------------
    def describe(entry) -> dict:
        return entry.summary(active=entry.name == registry.current()[0])

    @api.get("/models", response_model=ModelList, tags=["models"], summary="List the models")
    def list_models() -> dict:
        active = registry.current()[0]
        return {"active": active, "scale": settings.scale,
                "models": [e.summary(e.name == active) for e in registry.entries()]}

    name_param = PathParam(max_length=64, description="model name ('shipped' for the shipped model)")

    @api.get("/models/{name}", response_model=ModelInfo, tags=["models"], responses=_errors(404),
             summary="Describe one model")
    def get_model(name: str = name_param) -> dict:
        return describe(registry.entry(name))

    @api.post("/models/{name}/activate", response_model=ModelInfo, tags=["models"],
              responses=_errors(403, 404, 422),
              summary="Serve predictions with this model",
              description="Loads and checks the model, then switches to it in every server process. Requests in "
                          "flight finish on the model they started with.")
    def activate(name: str = name_param) -> dict:
        return describe(registry.activate(name))

    # -- training -----------------------------------------------------------------------------------------------
    @api.post("/models/train", response_model=JobInfo, status_code=202, tags=["training"],
              responses=_errors(403, 408, 409, 422, 503),
              summary="Start a training run",
              description="Trains the CNN and the meta-network on a dataset on the server's disk, in a background "
                          "process. One run at a time (409 while one is running). Follow it at /api/jobs/{id}; "
                          "when it succeeds the model appears in /api/models (it is not activated).")
    def train(body: TrainRequest, response: Response) -> dict:
        state = jobs.start(body.model_dump())
        response.headers["Location"] = f"/api/jobs/{state['id']}"
        return state

    job_param = PathParam(description="job id (12 hex digits)")

    @api.get("/jobs", response_model=list[JobInfo], tags=["training"], summary="List training runs")
    def list_jobs() -> list:
        return jobs.list()

    @api.get("/jobs/{job_id}", response_model=JobInfo, tags=["training"], responses=_errors(404),
             summary="Follow a training run")
    def get_job(job_id: str = job_param, lines: int = Query(40, ge=0, le=1000, description="log lines")) -> dict:
        return jobs.get(job_id, lines)

    @api.delete("/jobs/{job_id}", response_model=JobInfo, tags=["training"],
                responses=_errors(403, 404, 409, 503),
                summary="Cancel a training run", description="Returns once the run has stopped.")
    def cancel_job(job_id: str = job_param) -> dict:
        return jobs.cancel(job_id)

    app.include_router(api)
    if review is not None:
        app.include_router(review.router)

    # -- health and the index page ------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["health"], responses=_errors(503), summary="Liveness")
    def healthz():
        try:
            name, detector = registry.current()
        except ModelError as err:
            return JSONResponse({"detail": str(err)}, status_code=503)
        return {"status": "ok", "model": name, "version": __version__, "device": getattr(detector, "device", "cpu"),
                "device_detail": getattr(detector, "device_detail", None), "scale": settings.scale,
                "native": native_problem(detector) is None}

    if review is None:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def index() -> str:
            return INDEX

    _add_error_handlers(app)
    # Inside _CatchAll: a body that stopped coming is a 408 of its own, not an internal error.
    app.add_middleware(BodyTimeout, idle_s=settings.body_timeout, min_rate=settings.min_upload_rate)
    app.add_middleware(_CatchAll)
    app.add_middleware(AuthMiddleware, token=settings.token, trusted_hosts=settings.trusted_hosts)
    return app


def app_from_env() -> FastAPI:
    """Factory for the worker processes of ``--workers N`` (uvicorn imports it by name)."""
    return create_app(ServerSettings.from_env(os.environ[SETTINGS_ENV]))


# --------------------------------------------------------------------------------------------------------------
# Errors: always JSON with one line


def _add_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    app.add_exception_handler(ServiceError, known)

    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(err.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code in (204, 304):
            return Response(status_code=err.status_code, headers=err.headers)
        return JSONResponse({"detail": " ".join(str(err.detail).split())}, status_code=err.status_code,
                            headers=err.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)


def validation_message(errors: list[dict]) -> str:
    """FastAPI's validation errors as one line: ``body.epochs: Input should be greater than or equal to 1; ...``."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body" or len(e.get("loc", ())) == 1)
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(" ".join(p.split()) for p in parts) + more


class _CatchAll:
    """Last line of defence: an unexpected exception becomes a JSON 500 with one line, logged in one line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:  # noqa: BLE001 - a bug must not become a traceback for the client
            from ..scan import one_line

            log.error("internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                      type(err).__name__, one_line(err))
            log.debug("traceback", exc_info=True)
            if not started:
                body = json.dumps({"detail": f"internal error: {type(err).__name__}"}).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
