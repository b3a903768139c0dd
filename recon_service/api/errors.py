"""The one HTTP error of the service: a status, a message for the client, optional headers.

Routes raise :class:`ApiError`; ``app.py`` renders it, and every other failure (validation,
unknown route, oversize body, crash), as ``{"error": "..."}``.
"""

from __future__ import annotations


class ApiError(Exception):
    """An answer other than 2xx, rendered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
