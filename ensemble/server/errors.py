"""The one error type the service turns into an HTTP answer: a status code and a one-line message."""
from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses. ``status`` is the HTTP status, ``str(err)`` one line for the user.

    The app answers every subclass (uploads, models, jobs) the same way: ``{"detail": str(err)}`` with ``status``.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
