"""Job messages: the one place that turns pipeline errors and worker exits into what a person reads.

Every message says what happened and what to do next; the API shows it as a job's ``message`` and
the callbacks carry it to the backend.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path

from pipelines.errors import Cancelled, InvalidInput, InvalidOptions, ReconError, ReconstructionFailed
from recon_service.settings import Settings
from recon_service.storage.s3 import StorageError

MAX_ATTEMPTS = 3
"""A job interrupted by this many service restarts is failed instead of re-run again."""
SIMULATED = " [simulated: RECON_PIPELINE=simulate, no real reconstruction]"


def message_for_error(exc: BaseException, *, writing: Path | None = None) -> str:
    """The job message for an exception that ended a pipeline run (``writing``: the file being written, if known)."""
    full = disk_full(exc)
    if full is not None:
        target = full.filename or writing
        where = f"writing {target}" if target else "writing the job's files"
        return (
            f"no space left on device while {where}; free space under MODEL_OUTPUT_ROOT "
            "(or set RECON_RETENTION_S to remove old jobs' files) and submit the job again"
        )
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, StorageError):
        return f"the photos could not be read from the object store: {exc.message}"
    if isinstance(exc, InvalidOptions):
        return f"invalid options: {exc}"
    if isinstance(exc, ReconstructionFailed):
        return f"{exc.stage}: {exc.message}"
    if isinstance(exc, (InvalidInput, ReconError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "ran out of memory; try the preview preset, fewer photos or a machine with more memory"
    return f"internal error ({type(exc).__name__}: {exc}); see the service log and report it"


def disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``exc`` (stages wrap library errors), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        current = current.__cause__ or current.__context__
    return None


def newest_file(folder: Path) -> Path | None:
    """The most recently modified file under ``folder``: the one a failed write was writing."""
    newest: tuple[float, Path] | None = None
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            if path.is_file() and (newest is None or path.stat().st_mtime >= newest[0]):
                newest = (path.stat().st_mtime, path)
        except OSError:
            continue
    return newest[1] if newest else None


def message_for_exit(exitcode: int | None) -> str:
    """The job message for a worker process that ended without recording a result."""
    if exitcode == -signal.SIGKILL:
        return "worker was killed, probably out of memory; try the preview preset or fewer photos"
    if exitcode == 128 + signal.SIGTERM:  # our SIGTERM handler's exit: stopped from outside, cleanly
        return "worker was stopped (SIGTERM) before it finished; submit the job again"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker crashed ({name}); see the service log and report it"
    return f"worker exited with code {exitcode} without a result; see the service log"


def timeout_message(settings: Settings) -> str:
    return f"timed out after {settings.job_timeout_s:g} s (RECON_JOB_TIMEOUT_S); try the preview preset or fewer photos"


def stopped_message(reason: str | None, settings: Settings) -> str:
    """The message of a job stopped on request: by its user, or by the time limit."""
    return timeout_message(settings) if reason == "timeout" else "cancelled"


GIVE_UP_MESSAGE = (
    f"interrupted by {MAX_ATTEMPTS} service restarts while running; submit it again with a new job_id"
)


def mark(message: str, settings: Settings) -> str:
    """``message`` as the job shows it: simulated jobs say so in every message."""
    return message + SIMULATED if settings.simulated else message
