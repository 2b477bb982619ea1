"""Who may call the service: the bearer token on ``/api`` routes, the ``blur_token`` cookie, the Host check.

Rules (enforced by :class:`AuthMiddleware`, a plain ASGI middleware so it also covers routers included by others,
such as the review page's ``/api/review/...``):

- With a token, every ``/api`` route needs ``Authorization: Bearer <token>`` or the ``blur_token`` cookie.
- Opening any page (a GET outside ``/api``) with ``?token=<token>`` sets that cookie (HttpOnly, SameSite=Strict)
  and redirects to the same URL without the token, so the browser page works and the token leaves the address bar.
- ``/healthz``, ``/docs``, ``/openapi.json`` and the pages themselves stay open: they hold no data.
- With ``trusted_hosts``, a request whose Host header is not one of them gets 400. A server bound to loopback
  without a token uses this against DNS rebinding (a web page whose own host name resolves to 127.0.0.1).
- A request that may change something (any method but GET, HEAD and OPTIONS), on any path, gets 403 when a
  browser says another site sent it (:func:`cross_site`), with or without a token: a page on evil.example, or on
  localhost:8001, can make the browser post a form or a fetch to this server (and attach the cookie), but cannot
  hide where it came from. Clients that send neither ``Origin`` nor ``Sec-Fetch-Site`` (curl, scripts) pass.
  Reads (GET) stay open cross-site: the browser does not let the other page read the answer.

Tokens are compared in constant time (``hmac.compare_digest``).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from typing import Iterable, Mapping, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request

COOKIE = "blur_token"
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
"""Characters a token may hold: safe in a header, a cookie and a URL query without quoting."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing here; every other one goes through :func:`cross_site`."""

SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})
"""``Sec-Fetch-Site`` values let through. ``same-site`` is refused: it includes other ports of this host."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> None:
    """Raise ValueError (one line) for a token that cannot travel safely in a cookie or header."""
    if not TOKEN_CHARS.match(token):
        raise ValueError("the token may hold only letters, digits and . _ ~ + / = -")


def loopback_hosts(host: str) -> tuple[str, ...]:
    """The Host header names a loopback-bound server answers to: the loopback names and the address it binds."""
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, host.strip().strip("[]").lower())))


def _host_name(value: str) -> str:
    """Host header → name without port: ``127.0.0.1:8000`` → ``127.0.0.1``, ``[::1]:80`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _authority(url_or_host: str, scheme: str) -> Optional[tuple[str, int]]:
    """``(host, port)`` of an Origin/Referer URL or, with ``scheme`` given, a Host header; None if malformed."""
    parts = urlsplit(url_or_host if "://" in url_or_host else f"//{url_or_host}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme or scheme
    return parts.hostname.lower(), port if port is not None else (443 if scheme == "https" else 80)


def _same_host(url: str, host: str) -> bool:
    """Whether ``url`` (an Origin or Referer) names the server of the ``Host`` header ``host``."""
    theirs = _authority(url, "")
    return theirs is not None and theirs == _authority(host, urlsplit(url).scheme)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 100 else value[:100] + "...")


def cross_site(headers: Mapping[bytes, bytes]) -> Optional[str]:
    """Why a state-changing request with these (raw ASGI) headers must be refused as sent by another site, or None.

    The one check every state-changing route shares (the middleware below applies it; the review router also
    depends on it through :func:`same_origin`, so it holds when that router is mounted elsewhere):

    - ``Sec-Fetch-Site`` (sent by current browsers, cannot be set by a page) must be ``same-origin`` or ``none``;
    - ``Origin`` (sent with every cross-origin request and every POST) must name the server of the ``Host`` header,
      scheme aside (a TLS proxy in front keeps the Host) and default ports filled in; ``Origin: null`` never does;
    - without an ``Origin``, a ``Referer`` (older browsers) must name that server too.

    A request with none of the three is not from a browser page, and passes.
    """
    site = headers.get(b"sec-fetch-site")
    if site is not None and site.decode("latin-1").strip().lower() not in SAME_ORIGIN_SITES:
        return (f"cross-site request refused (Sec-Fetch-Site: {_shown(site.decode('latin-1'))}): changes are "
                "accepted only from this server's own pages or from programs")
    host = headers.get(b"host", b"").decode("latin-1")
    for name in (b"origin", b"referer"):
        value = headers.get(name)
        if value is not None:
            text = value.decode("latin-1").strip()
            if not _same_host(text, host):
                return (f"cross-origin request refused: {name.decode().capitalize()} {_shown(text)} is not this "
                        f"server ({_shown(host)})")
            break  # Origin, when sent, decides: the Referer may be stripped or rewritten by privacy settings
    return None


def same_origin(request: Request) -> None:
    """FastAPI dependency for a state-changing route: :func:`cross_site` as an HTTP 403."""
    reason = cross_site(dict(request.scope.get("headers") or []))
    if reason is not None:
        raise HTTPException(403, reason)


def _cookie(headers: dict[bytes, bytes]) -> Optional[str]:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _same(given: Optional[str], token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class AuthMiddleware:
    """ASGI middleware applying the rules above. ``token`` None means no authentication."""

    def __init__(self, app, token: Optional[str] = None, trusted_hosts: Optional[Iterable[str]] = None):
        self.app = app
        self.token = token
        self.trusted = None if trusted_hosts is None else {h.strip("[]").lower() for h in trusted_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.trusted is not None and _host_name(headers.get(b"host", b"").decode("latin-1")) not in self.trusted:
            return await _json(send, 400, "invalid Host header: this server answers only to its own address")
        if scope.get("method") not in SAFE_METHODS:
            # Before the token: the browser attaches the cookie to a cross-site request too.
            reason = cross_site(headers)
            if reason is not None:
                return await _json(send, 403, reason)
        if self.token is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if _is_api(path):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, given = auth.partition(" ")
            if (scheme.lower() == "bearer" and _same(given.strip(), self.token)) or _same(_cookie(headers), self.token):
                return await self.app(scope, receive, send)
            return await _json(send, 401, "authentication required: send the header 'Authorization: Bearer <token>'",
                               [(b"www-authenticate", b'Bearer realm="blur-detect"')])
        if scope.get("method") in ("GET", "HEAD"):
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = [v for k, v in query if k == "token"]
            if given:
                if not _same(given[-1], self.token):
                    return await _json(send, 401, "invalid token in the address")
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                # '//evil.host' or '/\\evil.host' as a Location is another site to a browser: keep it on this one.
                local = "/" + (scope.get("root_path", "") + path).lstrip("/\\")
                location = local + (f"?{rest}" if rest else "")
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return await _send(send, 303, b"", [(b"location", location.encode("latin-1", "replace")),
                                                    (b"set-cookie", cookie.encode("latin-1")),
                                                    (b"cache-control", b"no-store")])
        return await self.app(scope, receive, send)


class RedactToken(logging.Filter):
    """Logging filter for uvicorn's access log: ``?token=...`` in a logged URL becomes ``?token=***``."""

    _pattern = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


async def _json(send, status: int, detail: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await _send(send, status, body, [(b"content-type", b"application/json"), *(extra or [])])


async def _send(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
