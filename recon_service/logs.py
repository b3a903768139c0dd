"""Logging shared by the server process and its worker processes: JSON lines on stderr, per-job files.

Every line is one JSON object (``RECON_LOG_FORMAT=json``, the default) with ``ts`` (UTC, ISO 8601),
``level``, ``logger``, ``process``, ``pid`` and ``msg``, plus ``job_id`` and ``stage`` on every line
about a job, and ``exc`` (the traceback) when there is one. Values are JSON-escaped, so a CR/LF in a
dataset name or a photo's file name can never forge a log line.

A line is about a job only when the code says so explicitly: it is logged in a worker process
(which runs exactly one job, :func:`bind_job`), inside :func:`job_context`, or with
``extra=about(job_id)``. Nothing is inferred from a message's text, so a request path or a
dataset name that looks like a job id never tags a line. Its ``stage`` is the worker's current
stage, or the job's stage in the store for lines of the server process.

Job lines are also appended to ``<RECON_DATA_DIR>/logs/<job_id>.log`` (same JSON lines, worker and
server lines of every attempt), so a failed job keeps its last lines; :func:`read_tail` reads them
for ``GET /jobs/{job_id}``'s ``log_tail``. In the server a line is tagged, and its file written,
only for a job the store holds (:func:`set_job_lookup`): no file is ever created for another id. A worker also routes what native libraries (COLMAP,
Open3D) write to file descriptor 2 into the log as ``native`` lines (:func:`capture_native_stderr`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
JOB_LOG_DIR = "logs"
"""Folder under RECON_DATA_DIR holding one ``<job_id>.log`` per job."""
TAIL_LINES = 50
"""Lines of a failed job's log shown in ``GET /jobs/{job_id}`` (``log_tail``)."""
TAIL_BYTES = 256 * 1024
"""At most this much of the end of a job's log file is read for its tail."""

_CURRENT_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("recon_job", default=None)
_GLOG_LEVEL = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


class _ProcessContext:
    """What this process knows about the job its lines belong to (one per process: logging is process-wide).

    A worker binds its one job and updates the stage as the pipeline advances; the server installs
    a job lookup (the store) while its app runs.
    """

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.stage: str | None = None
        self.job_lookup: Callable[[str], tuple[bool, str | None]] | None = None


_context = _ProcessContext()


def bind_job(job_id: str) -> None:
    """This process runs job ``job_id``: every line it logs is about that job (worker processes)."""
    _context.job_id, _context.stage = job_id, None


def bound_job() -> str | None:
    return _context.job_id


def set_stage(stage: str | None) -> None:
    """The bound job's pipeline stage now (called on every progress event; cheap)."""
    _context.stage = stage


def set_job_lookup(lookup: Callable[[str], tuple[bool, str | None]] | None) -> None:
    """How the server learns whether a job exists and its stage now: ``lookup(job_id) -> (known, stage)`` (``None`` to remove)."""
    _context.job_lookup = lookup


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside this block (this thread or task) are about ``job_id``."""
    token = _CURRENT_JOB.set(job_id)
    try:
        yield
    finally:
        _CURRENT_JOB.reset(token)


def about(job_id: str) -> dict[str, str]:
    """``extra=about(job_id)``: this one line is about ``job_id``."""
    return {"job_id": job_id}


class JobFields(logging.Filter):
    """Adds ``job_id`` and ``stage`` to each record about a job (never drops a record).

    About a job means: an explicit ``extra={"job_id": ...}``, the :func:`job_context` in force, or
    the job this (worker) process runs. In the server, an id the store does not hold is not tagged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "recon_job"):
            return True  # already done by the other handler
        job_id = getattr(record, "job_id", None) or _CURRENT_JOB.get() or _context.job_id
        stage = getattr(record, "stage", None)
        if job_id is not None and job_id != _context.job_id:
            job_id, looked_up = self._look_up(job_id)
            stage = stage or looked_up
        elif job_id is not None and stage is None:
            stage = _context.stage
        record.recon_job = job_id
        record.recon_stage = stage
        return True

    @staticmethod
    def _look_up(job_id: str) -> tuple[str | None, str | None]:
        lookup = _context.job_lookup
        if lookup is None:
            return job_id, None  # no store here (a tool, a test): the caller's word is taken
        try:
            known, stage = lookup(job_id)
        except Exception:  # a log line must never fail because the store is busy
            return None, None
        return (job_id, stage) if known else (None, None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_dict(record, self), ensure_ascii=False, default=str)


def record_dict(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """The JSON fields of ``record`` (``job_id``/``stage`` only when it is about a job)."""
    entry: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record.levelname,
        "logger": record.name,
        "process": record.processName,
        "pid": record.process,
        "msg": record.getMessage(),
    }
    job_id = getattr(record, "recon_job", None)
    if job_id is not None:
        entry["job_id"] = job_id
        entry["stage"] = getattr(record, "recon_stage", None)
    if record.exc_info:
        entry["exc"] = formatter.formatException(record.exc_info)
    elif record.stack_info:
        entry["exc"] = formatter.formatStack(record.stack_info)
    return entry


class JobLogFiles(logging.Handler):
    """Appends each record about a job to ``<folder>/<job_id>.log`` as a JSON line.

    The file is opened in append mode for every line, so the server and a worker (two processes)
    can both write to it, and a worker killed mid-run loses nothing it logged.
    """

    def __init__(self, folder: Path, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.folder = folder
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        job_id = getattr(record, "recon_job", None)
        if job_id is None:
            return
        try:
            line = self.format(record) + "\n"
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / f"{job_id}.log", "a", encoding="utf-8") as f:
                f.write(line)
        except Exception:
            self.handleError(record)


def configure_logging(level: str, fmt: str = "json", *, job_log_dir: Path | None = None, stream: TextIO | None = None) -> None:
    """Send every log line to stderr (``stream``) at ``level``, and job lines to ``job_log_dir``; safe to call again.

    ``fmt``: ``json`` (one object per line) or ``text`` (for people at a terminal).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recon", False):
            root.removeHandler(handler)
            handler.close()
    fields = JobFields()
    handler: logging.Handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handlers = [handler]
    if job_log_dir is not None:
        handlers.append(JobLogFiles(job_log_dir))
    for h in handlers:
        h.addFilter(fields)
        h._recon = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    # One line per HTTP request of the callback sender is noise; failures are logged by callbacks.py.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))


def job_log_path(data_dir: Path, job_id: str) -> Path:
    return data_dir / JOB_LOG_DIR / f"{job_id}.log"


def read_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a job log, each as ``<time> <LEVEL> <stage> <logger>: <message>``.

    Reads at most :data:`TAIL_BYTES` from the end; lines that are not JSON are returned as they are.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    raw = data.decode("utf-8", "replace").splitlines()
    if size > TAIL_BYTES:
        raw = raw[1:]  # the first line is cut
    return [_readable(line) for line in raw[-lines:] if line.strip()]


def _readable(line: str) -> str:
    try:
        entry = json.loads(line)
        text = f"{entry['ts']} {entry['level']} {entry.get('stage') or '-'} {entry['logger']}: {entry['msg']}"
    except (ValueError, KeyError, TypeError):
        return line
    return text + ("\n" + entry["exc"] if entry.get("exc") else "")


def capture_native_stderr(logger_name: str = "native") -> TextIO:
    """Route whatever is written to file descriptor 2 (C++ libraries, stray prints) into the log.

    For worker processes, before :func:`configure_logging`, which must be given the returned
    stream: the real stderr (a duplicate of the old fd 2). Fd 2 itself becomes a pipe read by a
    daemon thread that logs each line as a record of ``logger_name`` (COLMAP's ``I``/``W``/``E``
    prefixes set the level), so such lines are JSON too, carry the job id and stage, and reach
    the job's log file.
    """
    sys.stderr.flush()
    real_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    logger = logging.getLogger(logger_name)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode("utf-8", "replace").rstrip()
                if text:
                    logger.log(_GLOG_LEVEL.get(text[:1], logging.INFO) if text[1:5].isdigit() else logging.WARNING, "%s", text)

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()
    return real_stream
