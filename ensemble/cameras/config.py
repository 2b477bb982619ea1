"""The camera list: read a YAML or CSV config, validate it, resolve credentials from the environment.

A config names each camera, where to grab its frames and how to judge them::

    defaults:                      # optional; any per-camera key except name/url
      timeout: 10
      scale: auto                  # screen, native or auto (--scale, default auto): what frames are judged at
    cameras:
      - name: gate
        url: http://192.168.1.20/snapshot.jpg
        username_env: GATE_USER    # credentials are named, never written, in the config
        password_env: GATE_PASS

Every problem becomes one :class:`ConfigError` whose message names the file, the camera and the field. Credentials
are wrapped in :class:`Secret` as soon as they are read, so that no ``repr``, log line or traceback can show them,
and :func:`redact_url` is the only form of a URL that leaves this module.
"""
from __future__ import annotations

import base64
import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from ..cli_common import SCALES

KINDS = ("auto", "http", "opencv")
"""``http``: the built-in HTTP client (a JPEG snapshot, or an MJPEG multipart stream); ``opencv``: OpenCV/FFmpeg
(rtsp://, video files, and any stream FFmpeg reads); ``auto``: http for http(s):// URLs, opencv for the rest."""

AUTHS = ("basic", "digest", "bearer")
HTTP_SCHEMES = ("http", "https")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt", "http", "https", "file")

LIMITS = {  # key: (lowest, highest) accepted
    "frames": (1, 100),
    "frame_interval": (0.0, 60.0),
    "timeout": (0.5, 600.0),
    "drop": (1.0, 99.0),
    "confirm": (1, 100),
}

CAMERA_KEYS = ("name", "url", "kind", "auth", "username_env", "password_env", "token_env", "verify_tls",
               "threshold", "drop", "confirm", "frames", "frame_interval", "timeout", "scale")
DEFAULT_KEYS = CAMERA_KEYS[2:]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# Query parameters that commonly carry a camera's password or token (Foscam's ?pwd=, API keys, signed URLs).
_SECRET_PARAMS = re.compile(r"(?i)^(pass|passwd|password|pwd|pw|token|access_token|auth|key|apikey|api_key|"
                            r"secret|sig|signature|usr|user|username|login)$")


class ConfigError(ValueError):
    """The config cannot be used. ``str(err)`` is one line naming the file, camera and field."""


class Secret:
    """A credential. Shows as ``***`` everywhere (str, repr, f-strings, tracebacks); :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:  # so that a reloaded config can tell which cameras changed
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self):  # never pickled or copied into another process by accident
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Camera:
    """One camera, validated.

    ``url`` is the display form (credentials and secret query values replaced by ``***``; ``${VAR}`` placeholders
    kept as written): the only form that may be printed or stored. ``source`` is the URL as written in the config,
    ``${VAR}`` placeholders unresolved; :meth:`target` builds the URL actually opened. ``threshold`` is a blur
    probability (None: the model's; ``inf``: never BLURRY); ``drop`` a fraction (0.5 = 50 %); ``timeout`` and
    ``frame_interval`` seconds; ``confirm`` the checks in a row that a new state needs before it is reported;
    ``scale`` the scale its frames are judged at ('screen', 'native' or 'auto', ensemble.detector.SCALES).
    ``None`` means "use the command-line default".
    """

    name: str
    url: str
    source: Secret
    kind: str
    auth: Optional[str] = None
    username: Optional[Secret] = None
    password: Optional[Secret] = None
    token: Optional[Secret] = None
    placeholders: Mapping[str, Secret] = field(default_factory=dict)
    verify_tls: bool = True
    threshold: Optional[float] = None
    drop: Optional[float] = None
    confirm: Optional[int] = None
    frames: int = 1
    frame_interval: float = 0.5
    timeout: Optional[float] = None
    scale: Optional[str] = None

    @property
    def is_file(self) -> bool:
        """True for a video file (read from where the last check stopped, as if it were a live stream)."""
        return self.kind == "opencv" and _is_path(self.source.reveal())

    def target(self) -> Secret:
        """The URL (or file path) to open, with ``${VAR}`` filled in.

        For the HTTP client, credentials written into the URL are removed (they travel in a header: see
        :meth:`credentials`); for OpenCV, username/password from the environment are written into it, which is the
        only way FFmpeg takes them.
        """
        text = self._resolved()
        if _is_path(text):
            return Secret(text)
        parts = urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
        if self.kind == "http":
            return Secret(urlunsplit(parts._replace(netloc=host)))
        if self.username is not None:
            userinfo = quote(self.username.reveal(), safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password.reveal(), safe="")
            return Secret(urlunsplit(parts._replace(netloc=f"{userinfo}@{host}")))
        return Secret(text)

    def _resolved(self) -> str:
        """The source with ``${VAR}`` replaced by the variable's value (percent-encoded)."""
        return _PLACEHOLDER.sub(lambda m: quote(self.placeholders[m.group(1)].reveal(), safe=""),
                                self.source.reveal())

    def credentials(self) -> tuple[Optional[str], Optional[Secret], Optional[Secret]]:
        """(auth, username, password-or-token) for the HTTP client; credentials in the URL count as basic."""
        if self.token is not None:
            return "bearer", None, self.token
        if self.username is not None:
            return self.auth or "basic", self.username, self.password or Secret("")
        userinfo = _userinfo(self._resolved())
        if userinfo is not None:
            user, _, password = userinfo.partition(":")
            return self.auth or "basic", Secret(_unquote(user)), Secret(_unquote(password))
        return None, None, None

    def secrets(self) -> list[str]:
        """Every credential string of this camera (and its encoded forms), for scrubbing text before it is shown."""
        given = [s.reveal() for s in (self.username, self.password, self.token, *self.placeholders.values())
                 if s is not None]
        values = given + [quote(v, safe="") for v in given]  # as they are written into a URL
        source = self._resolved()
        userinfo = _userinfo(source)
        if userinfo:
            values += [userinfo, _unquote(userinfo), *(_unquote(p) for p in userinfo.split(":", 1))]
        if not _is_path(source):
            values += [v for k, v in parse_qsl(urlsplit(source).query) if _SECRET_PARAMS.match(k)]
        auth, user, password = self.credentials()
        if auth == "basic" and user is not None:
            pair = f"{user.reveal()}:{password.reveal() if password else ''}"
            values.append(base64.b64encode(pair.encode()).decode())
        # Longest first, so that a secret containing another is replaced whole; 3 characters at least, so that
        # a one-letter user name does not blank out every "a" in a message (short ones are never put in messages).
        return sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``: the last guard before anything is shown."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` safe to show: user:password@ becomes ***@, secret-looking query values become ***.

    Video file paths are returned unchanged; ``${VAR}`` placeholders are kept (they are names, not values).
    """
    if _is_path(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # unparseable: show nothing of it rather than risk showing a password
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, value = piece.partition("=")
            secret = eq and _SECRET_PARAMS.match(name) and not _PLACEHOLDER.fullmatch(value)
            pieces.append(f"{name}=***" if secret else piece)
        query = "&".join(pieces)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# --------------------------------------------------------------------------------------------------------------
# Reading


def load_config(path: str | os.PathLike, environ: Optional[Mapping[str, str]] = None) -> list[Camera]:
    """The cameras of the YAML (.yaml/.yml/anything else) or CSV (.csv) file at ``path``, in file order.

    ``environ`` (default ``os.environ``) supplies the variables named by ``*_env`` keys and ``${VAR}``
    placeholders. Relative video file paths are taken relative to the config's folder. Raises ConfigError.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file (not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read: {err.strerror or err}") from None
    if path.suffix.lower() == ".csv":
        defaults, entries = {}, _read_csv(text, where)
    else:
        defaults, entries = _read_yaml(text, where)
    if not entries:
        raise ConfigError(f"{where}: no cameras listed")
    defaults = _check_defaults(defaults, where)
    cameras: list[Camera] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        camera = _camera(entry, defaults, number, where, environ, path.parent)
        key = camera.name.casefold()  # snapshot file names must stay distinct on case-insensitive disks too
        if key in seen:
            raise ConfigError(f"{where}: camera #{number}: name: {camera.name!r} is already used by camera "
                              f"#{seen[key]}")
        seen[key] = number
        cameras.append(camera)
    return cameras


def _read_yaml(text: str, where: str) -> tuple[dict, list]:
    try:
        import yaml  # optional: the 'cameras' extra; CSV configs work without it
    except ImportError:
        raise ConfigError(f"{where}: reading a YAML config needs PyYAML (pip install 'blur-ensemble[cameras]'), "
                          "or write the config as CSV") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: {at}not valid YAML: {problem}") from None
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict):
        unknown = sorted(set(map(str, data)) - {"cameras", "defaults"})
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (expected 'cameras' and optionally "
                              "'defaults')")
        cameras, defaults = data.get("cameras"), data.get("defaults") or {}
        if not isinstance(cameras, list):
            raise ConfigError(f"{where}: 'cameras' must be a list of cameras")
        if not isinstance(defaults, dict):
            raise ConfigError(f"{where}: 'defaults' must be a mapping of keys to values")
        return defaults, cameras
    if data is None:
        return {}, []
    raise ConfigError(f"{where}: expected a list of cameras, or a mapping with 'cameras'")


def _read_csv(text: str, where: str) -> list[dict]:
    # Lines starting with '#' are comments; empty cells mean "not set".
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    if "name" not in header or "url" not in header:
        raise ConfigError(f"{where}: line 1: a CSV config needs a header row with at least 'name' and 'url' "
                          f"columns (got {', '.join(header) or 'nothing'})")
    entries = []
    for row in reader:
        if len(row) > len(header):
            raise ConfigError(f"{where}: camera #{len(entries) + 1}: {len(row)} cells for {len(header)} columns "
                              "(quote values that contain commas)")
        entries.append({h: v.strip() for h, v in zip(header, row) if v.strip() != ""})
    return entries


def _check_defaults(defaults: dict, where: str) -> dict:
    unknown = sorted(set(map(str, defaults)) - set(DEFAULT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: defaults: unknown key {unknown[0]!r}{_did_you_mean(unknown[0], DEFAULT_KEYS)}")
    return dict(defaults)


def _camera(entry: Any, defaults: dict, number: int, where: str, environ: Mapping[str, str],
            base: Path) -> Camera:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: camera #{number}: expected a mapping with name and url, got "
                          f"{type(entry).__name__}")
    raw_name = entry.get("name")
    label = f"camera #{number}"
    if isinstance(raw_name, (str, int)) and str(raw_name).strip():
        label = f"camera {str(raw_name).strip()!r}"

    def fail(key: str, message: str):
        raise ConfigError(f"{where}: {label}: {key}: {message}")

    unknown = sorted(set(map(str, entry)) - set(CAMERA_KEYS))
    if unknown:
        raise ConfigError(f"{where}: {label}: unknown key {unknown[0]!r}{_did_you_mean(unknown[0], CAMERA_KEYS)}")
    merged = {**defaults, **entry}

    name = _text(merged, "name", fail, required=True)
    if len(name) > 100:
        fail("name", "longer than 100 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        fail("name", "contains control characters")

    source = _text(merged, "url", fail, required=True)
    if any(c.isspace() for c in source.strip()) and not _is_path(source):
        fail("url", "contains spaces (percent-encode them as %20)")
    placeholders = {}
    for var in _PLACEHOLDER.findall(source):
        if not _ENV_NAME.match(var):
            fail("url", f"${{{var}}} is not a valid environment variable name")
        if var not in environ:
            fail("url", f"environment variable {var} is not set")
        placeholders[var] = Secret(environ[var])
    display = redact_url(source)

    kind = _choice(merged, "kind", KINDS, fail) or "auto"
    if _is_path(source):
        if kind == "http":
            fail("kind", "http needs an http:// or https:// URL")
        kind = "opencv"
        path = source[len("file://"):] if source.startswith("file://") else source
        path = os.path.expanduser(path)
        source = path if os.path.isabs(path) else str(base / path)
    else:
        try:
            parts = urlsplit(source)
        except ValueError as err:  # "Invalid IPv6 URL": an unclosed '[' in the host
            fail("url", f"not a valid URL ({err})")
        scheme = parts.scheme.lower()
        allowed = HTTP_SCHEMES if kind == "http" else STREAM_SCHEMES if kind == "opencv" else \
            tuple(dict.fromkeys(HTTP_SCHEMES + STREAM_SCHEMES))
        if scheme not in allowed:
            fail("url", f"unsupported scheme {scheme + '://' if scheme else '(none)'}; use "
                        f"{', '.join(s + '://' for s in allowed)} or a video file path")
        if not parts.hostname:
            fail("url", "has no host name")
        if kind == "auto":
            kind = "http" if scheme in HTTP_SCHEMES else "opencv"

    auth = _choice(merged, "auth", AUTHS, fail)
    username = _env_secret(merged, "username_env", fail, environ)
    password = _env_secret(merged, "password_env", fail, environ)
    token = _env_secret(merged, "token_env", fail, environ)
    if password is not None and username is None:
        fail("password_env", "needs username_env too")
    if token is not None and username is not None:
        fail("token_env", "give either a token (token_env) or a user name and password, not both")
    if token is not None and token.reveal() == "":
        fail("token_env", f"environment variable {merged['token_env']} is empty")
    if auth == "bearer" and token is None:
        fail("auth", "bearer needs token_env")
    if auth in ("basic", "digest") and username is None and _userinfo(source) is None:
        fail("auth", f"{auth} needs username_env (and usually password_env)")
    if token is not None and auth not in (None, "bearer"):
        fail("auth", f"{auth} does not take a token; use auth: bearer or leave auth out")
    if kind == "opencv":
        if token is not None:
            fail("token_env", "bearer tokens work only with the HTTP client (kind: http)")
        if _is_path(source) and (username is not None or auth is not None):
            fail("username_env" if username is not None else "auth", "a video file takes no credentials")

    verify_tls = _bool(merged, "verify_tls", fail)
    scale = _choice(merged, "scale", SCALES, fail)
    threshold = _threshold(merged, fail)
    drop = _number(merged, "drop", fail, percent=True)
    confirm = _number(merged, "confirm", fail, integer=True)
    frames = _number(merged, "frames", fail, integer=True)
    interval = _number(merged, "frame_interval", fail)
    timeout = _number(merged, "timeout", fail)
    frames = 1 if frames is None else int(frames)
    interval = 0.5 if interval is None else interval
    if timeout is not None and frames > 1 and (frames - 1) * interval >= timeout:
        fail("frames", f"{frames} frames {interval:g} s apart do not fit in the {timeout:g} s timeout")
    return Camera(
        name=name, url=display, source=Secret(source), kind=kind, auth=auth, username=username, password=password,
        token=token, placeholders=placeholders, verify_tls=True if verify_tls is None else verify_tls,
        threshold=threshold, drop=None if drop is None else drop / 100.0,
        confirm=None if confirm is None else int(confirm), frames=frames, frame_interval=interval, timeout=timeout,
        scale=scale,
    )


# --------------------------------------------------------------------------------------------------------------
# Field parsers: each returns None when the key is absent and calls fail(key, message) when it is wrong


def _text(entry: dict, key: str, fail, required: bool = False) -> Optional[str]:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            fail(key, "missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        fail(key, f"expected text, got {type(value).__name__}")
    return str(value).strip()


def _choice(entry: dict, key: str, choices: tuple, fail) -> Optional[str]:
    value = _text(entry, key, fail)
    if value is None:
        return None
    if value.lower() not in choices:
        fail(key, f"{value!r} is not one of {', '.join(choices)}")
    return value.lower()


def _env_secret(entry: dict, key: str, fail, environ: Mapping[str, str]) -> Optional[Secret]:
    var = _text(entry, key, fail)
    if var is None:
        return None
    if not _ENV_NAME.match(var):
        fail(key, f"{var!r} is not an environment variable name (the config names the variable; the secret "
                  "itself lives in the environment)")
    if var not in environ:
        fail(key, f"environment variable {var} is not set")
    return Secret(environ[var])


def _bool(entry: dict, key: str, fail) -> Optional[bool]:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    fail(key, f"{value!r} is not true or false")


def _number(entry: dict, key: str, fail, integer: bool = False, percent: bool = False) -> Optional[float]:
    value = entry.get(key)
    if value is None or value == "":
        return None
    text = str(value).strip()
    if percent and text.endswith("%"):
        text = text[:-1]
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(text)
    except ValueError:
        fail(key, f"{value!r} is not a number")
    low, high = LIMITS[key]
    if integer and math.isfinite(number) and number != int(number):  # int(inf) would raise
        fail(key, f"{value!r} is not a whole number")
    if not (math.isfinite(number) and low <= number <= high):
        unit = " %" if percent else "" if integer else " s"
        fail(key, f"{value!r} is out of range ({low:g} to {high:g}{unit})")
    return number


def _threshold(entry: dict, fail) -> Optional[float]:
    value = entry.get("threshold")
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("off", "none", "never", "false") or value is False:
        return math.inf  # this camera is judged against its own baseline only (never BLURRY)
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        fail("threshold", f"{value!r} is not a blur probability (0-1, a percentage, or off)")
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        fail("threshold", f"{value!r} is not a probability between 0 and 1 (or 0% and 100%)")
    return number


def _did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_path(url: str) -> bool:
    """A video file path or file:// URL rather than a network URL."""
    return url.startswith("file://") or "://" not in url


def _userinfo(url: str) -> Optional[str]:
    if _is_path(url):
        return None
    netloc = urlsplit(url).netloc
    return netloc.rpartition("@")[0] if "@" in netloc else None


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


__all__ = ["AUTHS", "Camera", "ConfigError", "KINDS", "Secret", "load_config", "redact_url", "scrub"]
