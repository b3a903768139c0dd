"""A free TCP port on loopback, for servers that tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on now on 127.0.0.1 (the caller binds it soon; a race is retried by the caller)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
