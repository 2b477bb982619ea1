"""Read timeouts: a client that is slow to send its request cannot hold a connection (or an upload's files) forever.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but times nothing while a request is being
read: a client that sends half its headers, or the headers and then a byte of body now and then, keeps its
connection, and for ``/api/predict`` a temporary folder, for as long as it likes. Two layers close that:

- :class:`TimedH11Protocol`, uvicorn's h11 protocol with two timers of its own. **Headers**: from the moment a
  connection waits for a request (it opens, or the previous answer was sent) the request line and headers must
  arrive within ``header_timeout`` seconds, in total, however they are trickled; otherwise 408 (or, if not a byte
  came, a silent close, as for an idle keep-alive connection). **Unread body**: when the answer is sent before the
  body was read (401, 403, 413, ...) uvicorn keeps reading and dropping the rest; that rest obeys the body rule
  below, and the connection is closed when it does not.
- :class:`BodyTimeout`, an ASGI middleware timing each ``receive()`` of a body the application reads. **Body**:
  each wait for more lasts at most ``body_timeout`` seconds, and the body must keep an average of at least
  ``min_rate`` bytes/s (measured over the time spent waiting for it, which starts with ``body_timeout`` seconds of
  credit). Otherwise the request gets 408 with ``Connection: close``; the application sees an exception from
  ``receive()``, so ``/api/predict`` removes its temporary files as for any other error.

Time the server spends on its own work (parsing, writing, scoring) never counts against the client.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .cli import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, MIN_UPLOAD_RATE  # the defaults: seconds, seconds, bytes/s

log = logging.getLogger("ensemble.server")


def _answer_408(detail: str) -> tuple[list, bytes]:
    body = json.dumps({"detail": detail}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")], body


class BodyTimedOut(Exception):
    """Raised from ``receive()`` when the body stopped coming; :class:`BodyTimeout` turns it into the 408."""


class BodyTimeout:
    """ASGI middleware applying the body rule of this module (``idle_s`` seconds, ``min_rate`` bytes/s).

    Place it inside any middleware that turns exceptions into 500s: it answers the request itself.
    """

    def __init__(self, app, idle_s: float = BODY_TIMEOUT_S, min_rate: float = MIN_UPLOAD_RATE):
        if not (idle_s > 0 and min_rate > 0):
            raise ValueError("body timeout and minimum rate must be above 0")
        self.app, self.idle_s, self.min_rate = app, float(idle_s), float(min_rate)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import anyio

        waited = 0.0  # seconds spent waiting for the body so far
        received = 0  # body bytes so far
        complete = timed_out = started = False
        reason = ""

        async def timed_receive():
            nonlocal waited, received, complete, timed_out, reason
            if timed_out:  # for the application, the client is gone
                return {"type": "http.disconnect"}
            if complete:  # after the body only http.disconnect comes: waiting for it is no read
                return await receive()
            credit = self.idle_s + received / self.min_rate - waited
            allowed = max(0.0, min(self.idle_s, credit))
            begun = anyio.current_time()
            message = None
            with anyio.move_on_after(allowed):  # data already received is returned even at 0: no checkpoint
                message = await receive()
            if message is None:
                timed_out = True
                reason = (f"nothing arrived for {self.idle_s:g} s" if allowed >= self.idle_s else
                          f"it arrives slower than {self.min_rate / 1024:g} KB/s")
                raise BodyTimedOut(reason)
            waited += anyio.current_time() - begun
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            else:
                complete = True  # the client went away
            return message

        async def guarded_send(message):
            nonlocal started
            if timed_out and not started:
                return  # whatever the application made of the error (a 400, a 500): the 408 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out or started:
                raise
        if timed_out and not started:
            headers, body = _answer_408(f"request timeout: the request body stopped coming ({reason})")
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": body})


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header and unread-body timers of this module.

    Give it to uvicorn as ``http=functools.partial(TimedH11Protocol, header_timeout=..., body_timeout=...,
    min_rate=...)`` (seconds, seconds, bytes/s); a partial of a module-level class also reaches ``--workers``.
    """

    def __init__(self, *args, header_timeout: float = HEADER_TIMEOUT_S, body_timeout: float = BODY_TIMEOUT_S,
                 min_rate: float = MIN_UPLOAD_RATE, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout, self.min_rate = header_timeout, body_timeout, min_rate
        self._header_timer: Optional[object] = None
        self._drain_timer: Optional[object] = None
        self._drain_start: Optional[float] = None  # loop time the answer went out with the body still coming
        self._drained = 0  # bytes of that body since

    # -- uvicorn's hooks --------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._drain_start is not None:
            self._drained += len(data)
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc) -> None:
        self._cancel_header()
        self._cancel_drain()
        super().connection_lost(exc)

    # -- the timers -------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Arm or cancel the timers for the connection's state (called after everything that changes it)."""
        if self.transport is None or self.transport.is_closing():
            self._cancel_header()
            self._cancel_drain()
            return
        their, ours = self.conn.their_state, self.conn.our_state
        if their is h11.IDLE:  # waiting for a request line and headers
            if self._header_timer is None:  # the deadline is for all of them: not reset by each byte
                self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        else:
            self._cancel_header()
        if their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):  # answered; the body is still coming
            now = self.loop.time()
            if self._drain_start is None:
                self._drain_start, self._drained = now, 0
            credit = self.body_timeout + self._drained / self.min_rate - (now - self._drain_start)
            self._cancel_drain(keep_start=True)
            self._drain_timer = self.loop.call_later(max(0.0, min(self.body_timeout, credit)), self._body_too_slow)
        else:
            self._cancel_drain()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is dropped
            headers, body = _answer_408(f"request timeout: the request headers did not arrive within "
                                        f"{self.header_timeout:g} s")
            head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n" + head + b"\r\n" + body)
            log.debug("closed a connection from %s: request headers too slow", self.client)
        self.transport.close()

    def _body_too_slow(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            log.debug("closed a connection from %s: the unread request body too slow", self.client)
            self.transport.close()

    def _cancel_header(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_drain(self, keep_start: bool = False) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if not keep_start:
            self._drain_start = None


__all__ = ["BODY_TIMEOUT_S", "BodyTimeout", "BodyTimedOut", "HEADER_TIMEOUT_S", "MIN_UPLOAD_RATE",
           "TimedH11Protocol"]
