"""``blur-detect serve``: the HTTP service on uvicorn.

    blur-detect serve [--host 127.0.0.1] [--port 8000] [--workers N] [--token T] [--models-dir DIR]
                      [--root DIR] [--data-root DIR]... [--max-upload-mb 50] [--max-files 32] [--log-level info]
                      [--header-timeout 10] [--body-timeout 30] [--min-upload-rate 1] [--device auto|cpu|cuda]
                      [--scale screen|native|auto] [--mlflow [URI]]

Exit status: 0 after a clean shutdown (Ctrl-C), 1 when the server cannot start (port in use, model missing, folder
not writable, ``--root`` already served by another server: one ``error:`` line, never a traceback), 2 usage error
(``--device cuda`` where CUDA cannot be used included). ``--scale native`` with an active model that has no
native-scale meta-network is one ``error:`` line and exit status 1, like a model that does not load.

Everything heavy (FastAPI, uvicorn, ONNX Runtime) is imported inside :func:`run`, so ``blur-detect --help`` stays
instant.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..cli_common import DEFAULT_SCALE, add_scale_argument, native_problem, positive_float, positive_int

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MIN_UPLOAD_RATE = 10.0, 30.0, 1024.0
"""Defaults of the read timeouts (:mod:`ensemble.server.timeouts`): seconds, seconds, bytes/s. Kept here, free of
uvicorn, so that ``--help`` stays instant."""

TOKEN_ENV = "BLUR_DETECT_TOKEN"
MIN_TOKEN_LENGTH = 16
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free one)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only). Any other address needs a "
                        "token: without --token one is generated and printed")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="server processes (default: 1); they share the active model through --models-dir")
    p.add_argument("--token", metavar="T",
                   help=f"require 'Authorization: Bearer T' on every /api route (default: ${TOKEN_ENV}; prefer the "
                        f"variable: a command line is visible to other users). At least {MIN_TOKEN_LENGTH} "
                        "characters")
    p.add_argument("--models-dir", metavar="DIR",
                   help="where models trained through the service are kept, with the choice of active model "
                        "(default: ~/.local/share/blur-ensemble/models)")
    p.add_argument("--root", metavar="DIR", help="serve the review page for the photos under DIR at /")
    p.add_argument("--data-root", action="append", metavar="DIR",
                   help="a folder training data may come from; repeat for several (default: ../shared/datasets "
                        "beside the repository, when it exists). Paths outside these folders are refused")
    p.add_argument("--max-upload-mb", type=positive_float, default=50.0, metavar="MB",
                   help="largest file accepted by /api/predict, in MB (default: 50)")
    p.add_argument("--max-files", type=positive_int, default=32, metavar="N",
                   help="most files in one /api/predict request (default: 32)")
    p.add_argument("--header-timeout", type=positive_float, default=HEADER_TIMEOUT_S, metavar="S",
                   help="seconds a client has to send a request's line and headers, in all (default: "
                        f"{HEADER_TIMEOUT_S:g}); a slower one is answered 408 and disconnected")
    p.add_argument("--body-timeout", type=positive_float, default=BODY_TIMEOUT_S, metavar="S",
                   help="longest wait for more of a request body, such as an upload, in seconds (default: "
                        f"{BODY_TIMEOUT_S:g}); a body that stops coming is answered 408 and its files dropped")
    p.add_argument("--min-upload-rate", type=positive_float, default=MIN_UPLOAD_RATE / 1024, metavar="KB",
                   help="slowest average a request body may arrive at, in KB/s, once the first --body-timeout "
                        f"seconds are spent (default: {MIN_UPLOAD_RATE / 1024:g}); a slower one is answered 408")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="server log detail (default: info)")
    p.add_argument("--mlflow", nargs="?", const="./mlruns", default=None, metavar="URI",
                   help="track every training job in MLflow at URI; a bare --mlflow uses a local file store, "
                        "./mlruns in the current folder (needs the track extra: pip install 'blur-ensemble[track]')")
    from ..cli import add_device_argument

    add_device_argument(p)
    add_scale_argument(p, what="an upload to /api/predict (unless its 'scale' form field says otherwise) and each "
                               "photo of the review page (--root)")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from importlib.util import find_spec
    from pathlib import Path

    parser: argparse.ArgumentParser = args._parser
    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if find_spec(m) is None]
    if missing:
        _err(f"error: blur-detect serve needs the 'serve' extra (missing: {', '.join(missing)}): "
             "pip install 'blur-ensemble[serve]'")
        return 1
    from ..cli import cuda_precheck, device_error_line

    problem = cuda_precheck(args.device)
    if problem:
        _err(problem)
        return 2
    from .auth import check_token, is_loopback, loopback_hosts

    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if token is not None:
        try:
            check_token(token)
        except ValueError as err:
            parser.error(f"--token: {err}")
        if len(token) < MIN_TOKEN_LENGTH:
            parser.error(f"--token: use at least {MIN_TOKEN_LENGTH} characters "
                         "(python -c 'import secrets; print(secrets.token_urlsafe())' makes one)")
    loopback = is_loopback(args.host)
    generated = False
    if token is None and not loopback:
        import secrets

        token, generated = secrets.token_urlsafe(24), True
    root = None
    if args.root is not None:
        root = Path(args.root).expanduser()
        if not root.is_dir():
            parser.error(f"--root: {args.root} is not a folder")
    data_roots = None
    if args.data_root:
        for folder in args.data_root:
            if not os.path.isdir(folder):
                parser.error(f"--data-root: {folder} is not a folder")
        data_roots = tuple(Path(f).expanduser().resolve() for f in args.data_root)
    mlflow_uri = None
    if getattr(args, "mlflow", None) is not None:  # docs/tracking.md
        from ..tracking import TrackingError, require, resolve_uri

        try:
            require()
        except TrackingError as err:
            _err(str(err))
            return 2
        mlflow_uri = resolve_uri(args.mlflow)
    workers = args.workers
    if root is not None and workers > 1:
        _err(f"note: --root keeps the review page's background scan in one process: serving with 1 worker, "
             f"not {workers}")
        workers = 1

    from ..review.lock import RootInUse
    from ..runtime import DeviceError
    from .app import SETTINGS_ENV, ServerSettings, create_app
    from .models import ModelError

    extra = {"data_roots": data_roots} if data_roots is not None else {}
    if args.models_dir:
        extra["models_dir"] = Path(args.models_dir).expanduser().resolve()
    settings = ServerSettings(host=args.host, port=args.port, workers=workers, token=token, root=root,
                              max_upload_bytes=int(args.max_upload_mb * 2**20), max_files=args.max_files,
                              trusted_hosts=loopback_hosts(args.host) if loopback else None,
                              header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                              min_upload_rate=args.min_upload_rate * 1024, device=args.device or "auto",
                              mlflow_uri=mlflow_uri, scale=args.scale or DEFAULT_SCALE, **extra)
    try:
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.models_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        _err(f"error: models folder {settings.models_dir} is not writable: {err.strerror or err}")
        return 1
    try:
        app = create_app(settings)
        model, detector = app.state.registry.current()  # a missing or broken model fails here, in one line
    except DeviceError as err:  # --device cuda, and the CUDA provider is there but does not load
        _err(device_error_line(err.reason))
        return 2
    except ModelError as err:
        _err(f"error: cannot load the model: {err}")
        return 1
    except RootInUse as err:  # before listening: the first server keeps the port and the folder
        _err(f"error: --root: {err}")
        return 1
    except Exception as err:  # noqa: BLE001 - e.g. the review page cannot start: one line, never a traceback
        from ..scan import one_line

        _err(f"error: cannot start the service: {one_line(err)}")
        return 1
    problem = native_problem(detector, model=f"the active model {model!r}") if settings.scale == "native" else None
    if problem:
        if app.state.review is not None:
            app.state.review.stop()  # it holds --root's lock
        _err(f"error: {problem}")
        return 1

    sock = _listen(args.host, args.port)
    if sock is None:
        return 1
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/"
    _err(detector.device_line())
    _err(f"blur-detect serve: listening on {url} (model {model!r}, judged at scale {settings.scale}, {workers} "
         f"worker{'s' if workers > 1 else ''}, models in {settings.models_dir})")
    if mlflow_uri is not None:
        _err(f"training jobs are tracked in MLflow at {mlflow_uri}")
    if generated:
        _err(f"no --token given for {args.host}, which other machines can reach: generated one.\n"
             f"  API:     curl -H 'Authorization: Bearer {token}' {url}api/models\n"
             f"  browser: {url}?token={token}")
    elif token is not None:
        _err("authentication: every /api route needs 'Authorization: Bearer <token>'; open pages with ?token=<token>")
    return _serve(app, settings, sock, port, args.log_level, SETTINGS_ENV)


def _listen(host: str, port: int):
    """A bound, listening socket, or None after printing one line (port in use, unknown host, no permission)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:  # UnicodeError: a name IDNA cannot encode ('a..b')
        _err(f"error: cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}")
        return None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        _err(f"error: cannot listen on {host}:{port}: {(err.strerror or str(err)).lower()}")
        return None
    sock.set_inheritable(True)
    return sock


def _serve(app, settings, sock, port: int, log_level: str, settings_env: str) -> int:
    import functools

    import uvicorn

    from .timeouts import TimedH11Protocol

    logging_config = _logging_config(log_level)
    # h11 (what uvicorn's "auto" is without httptools, which the serve extra does not install) with the header and
    # unread-body timers; the body the app reads is timed by the app's BodyTimeout middleware.
    http = functools.partial(TimedH11Protocol, header_timeout=settings.header_timeout,
                             body_timeout=settings.body_timeout, min_rate=settings.min_upload_rate)
    common = dict(host=settings.host, port=port, log_config=logging_config, log_level=log_level,
                  timeout_graceful_shutdown=30, server_header=False, http=http)
    if settings.workers == 1:
        server = uvicorn.Server(uvicorn.Config(app, **common))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
        return 0 if server.started else 1
    from uvicorn.supervisors import Multiprocess

    # The worker processes are fresh interpreters: they rebuild the app from the settings in the environment.
    os.environ[settings_env] = settings.to_env()
    config = uvicorn.Config("ensemble.server.app:app_from_env", factory=True, workers=settings.workers, **common)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _logging_config(level: str) -> dict:
    """uvicorn's logging set-up, with this package's logger printed the same way."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ensemble.server"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    # A page opened with ?token=... must not leave the token in the access log.
    config.setdefault("filters", {})["redact_token"] = {"()": "ensemble.server.auth.RedactToken"}
    config["handlers"]["access"]["filters"] = ["redact_token"]
    return config
