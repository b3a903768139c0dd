"""What the three SfM stages share about driving COLMAP: its log, cancellation, call batching.

COLMAP's own log goes to ``<work_dir>/colmap.log.<date>-<time>.<pid>``; only its errors reach stderr.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipelines.errors import Cancelled
from pipelines.progress import CancelToken

if TYPE_CHECKING:
    import pycolmap

T = TypeVar("T")

CALL_SECONDS = 1.5
"""Target duration of one pycolmap extraction/matching call. Each call costs ~0.25 s of set-up
(measured: 66 pairs in one call 2.5 s, in chunks of 16 3.4 s, of 4 7.0 s), so batches are sized
from the measured time per item to amortise it while reporting progress every ~1.5 s."""
NOT_PLACED_ADVICE = (
    "take more overlapping photos (every part of the object in at least 3 photos, neighbouring "
    "photos overlapping by about two thirds), keep the subject sharp and textured, and avoid moving objects"
)
"""What to tell a user whose photos could not be matched or placed."""


def route_colmap_log(work_dir: Path) -> Path:
    """Send COLMAP's (glog) log to a file in ``work_dir``, keep only errors on stderr; returns the
    file-name prefix (glog appends ``<date>-<time>.<pid>``). glog is process-wide: the last call wins."""
    import pycolmap

    log = pycolmap.logging
    prefix = Path(work_dir) / "colmap.log."
    log.logtostderr = False
    log.alsologtostderr = False
    log.stderrthreshold = int(log.Level.ERROR)
    log.set_log_destination(log.Level.INFO, str(prefix))  # the INFO file receives every severity
    for level in (log.Level.WARNING, log.Level.ERROR, log.Level.FATAL):
        log.set_log_destination(level, "")  # no extra per-severity files (glog would put them in /tmp)
    return prefix


@contextlib.contextmanager
def colmap_cancellable(cancel: CancelToken) -> Iterator[pycolmap.CancellationToken]:
    """A pycolmap token tied to ``cancel``; COLMAP's InterruptedError becomes :class:`Cancelled`."""
    try:
        yield cancel.colmap()
    except InterruptedError:
        if cancel.cancelled:
            raise Cancelled() from None
        raise
    cancel.check()


def timed_batches(items: Sequence[T], work: Callable[[Sequence[T]], None], *, first: int, cancel: CancelToken) -> Iterator[int]:
    """Run ``work`` over ``items`` in consecutive batches of about :data:`CALL_SECONDS` each
    (sized from the time per item measured so far); yields how many items are done after each."""
    done, size = 0, first
    while done < len(items):
        cancel.check()
        batch = items[done : done + size]
        started = time.monotonic()
        work(batch)
        per_item = max(1e-3, (time.monotonic() - started) / len(batch))
        done += len(batch)
        size = max(1, min(1024, round(CALL_SECONDS / per_item)))
        yield done
