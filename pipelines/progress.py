"""Progress reporting and cooperative cancellation, shared by every stage.

Stages receive a :data:`StageProgress` (fraction of *their own* work, 0..1, plus a short message)
and a :class:`CancelToken`; they know nothing about who listens. ``pipelines.run`` turns stage
fractions into overall :class:`ProgressEvent` objects using measured stage weights.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.errors import Cancelled

if TYPE_CHECKING:  # pycolmap is heavy; imported only where a token is really needed
    import pycolmap


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of a whole run."""

    stage: str
    """Fine-grained stage name (``ingest``, ``features``, ``matching``, ``sparse``, ``dense``,
    ``mesh``, ``texture``, ``export``)."""
    phase: str
    """Coarse phase of the stage, matching the service contract: ``processing``, ``meshing``,
    ``texturing``."""
    fraction: float
    """Overall fraction done, 0..1, never decreasing within a run."""
    stage_fraction: float
    """Fraction of the current stage done, 0..1."""
    message: str
    eta_seconds: float | None
    """Estimated seconds until the run ends; ``None`` while too little is known."""
    elapsed_seconds: float


ProgressFn = Callable[[ProgressEvent], None]
"""Receives overall progress events (CLI bar, job store, callbacks...)."""

StageProgress = Callable[[float, str], None]
"""What a stage calls: ``progress(fraction_of_this_stage, message)``."""


def no_progress(fraction: float, message: str) -> None:
    """A :data:`StageProgress` that discards reports (for calling a stage on its own)."""


class CancelToken:
    """Cooperative cancellation: ``cancel()`` from any thread, ``check()`` inside the work.

    COLMAP's own long calls accept a ``pycolmap.CancellationToken``; :meth:`colmap` hands out
    one that is cancelled together with this token, so a cancel also stops work inside C++.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._colmap_tokens: list[Any] = []

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            for token in self._colmap_tokens:
                token.cancel()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if a cancel was requested."""
        if self._event.is_set():
            raise Cancelled()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return ``True`` early if cancelled."""
        return self._event.wait(seconds)

    def colmap(self) -> pycolmap.CancellationToken:
        """A pycolmap token that is cancelled whenever this token is."""
        import pycolmap

        token = pycolmap.CancellationToken()
        with self._lock:
            if self._event.is_set():
                token.cancel()
            self._colmap_tokens.append(token)
        return token


class EtaEstimator:
    """ETA from overall fraction and elapsed time (stage weights make progress ~linear in time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def eta(self, fraction: float) -> float | None:
        elapsed = self.elapsed()
        if fraction < 0.02 or elapsed < 1.0:
            return None
        return max(0.0, elapsed * (1.0 - fraction) / fraction)
