"""Logging set-up shared by the server process and its worker processes (stderr, key=value)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Send every log line to stderr at ``level``; safe to call more than once."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recon", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._recon = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # One line per HTTP request of the callback sender is noise; failures are logged by callbacks.py.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
