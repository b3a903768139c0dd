"""Disk use per job, and the retention policy that frees it.

A job's files live in ``MODEL_OUTPUT_ROOT/<job_id>/``: the artifacts (``model.glb``, ``sparse/``,
``points.ply``, ``preview.png``, ``report.json``) and the real pipeline's working files in
``work/`` (resized photos, COLMAP database, depth maps, meshes), which are usually most of it.
With ``RECON_RETENTION_S`` set, :class:`RetentionSweeper` removes ``work/`` of every finished job
that many seconds after it finished, or the whole folder with ``RECON_RETENTION_MODELS=true``
(the backend copies the model when it is told the job completed). The store forgets those jobs'
history too: their settled (delivered or dead) callbacks, their ``stage_runs`` rows and their log
files (``RECON_DATA_DIR/logs/<job_id>.log``). Job records stay -- a swept job keeps its
``model_uri``, and its ``disk_bytes`` says what is left -- unless ``RECON_RETENTION_MODELS=true``
removed the model too: then the record goes as well (``GET /jobs/{id}`` answers 404), except
while a callback of it is still pending.

Only folders named like a job id whose job is final (completed or failed) are touched; anything
else under MODEL_OUTPUT_ROOT is left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from recon_service.jobs.records import JobState
from recon_service.jobs.store import Store
from recon_service.logs import JOB_LOG_DIR, about
from recon_service.settings import Settings
from recon_service.storage.clients import Storage
from recon_service.storage.s3 import StorageError
from recon_service.storage.uri import S3Location

logger = logging.getLogger(__name__)

WORK_DIR = "work"
"""The real pipeline's working folder inside a job's output folder (``pipelines.run``)."""
DISK_CACHE_S = 2.0
"""How long a measured ``disk_bytes`` is reused (walking a real job's folder takes milliseconds)."""


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du``; symlinks are not followed; 0 if absent)."""
    total = 0
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    total += st.st_blocks * 512
    if not stat.S_ISDIR(st.st_mode):
        return total
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed while we walked, or not ours to read
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
    return total


class DiskUsage:
    """``disk_bytes`` of each job's output folder (and of its running attempt's folder), measured again when the job changed or after :data:`DISK_CACHE_S` s."""

    def __init__(self, settings: Settings, cache_s: float = DISK_CACHE_S) -> None:
        self._settings = settings
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, float, int]] = {}  # job_id -> (measured at, job version, bytes)
        self._lock = threading.Lock()

    def of(self, job_id: str, version: float) -> int:
        """Bytes under the job's folder; ``version`` (the record's ``updated_at``) invalidates the cached value."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(job_id)
        if hit is not None and hit[1] == version and now - hit[0] < self._cache_s:
            return hit[2]
        attempts = self._settings.attempts_root
        running = list(attempts.glob(f"{job_id}.*")) if attempts.is_dir() else []
        local = disk_bytes(self._settings.job_output_dir(job_id)) if self._settings.local_output_root is not None else 0
        size = local + sum(disk_bytes(p) for p in running)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._cache_s}
            self._cache[job_id] = (now, version, size)
        return size

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._cache.pop(job_id, None)


@dataclass(frozen=True)
class Removal:
    """What one sweep removed for one job."""

    job_id: str
    path: Path
    bytes: int
    age_s: float
    """Seconds since the job finished."""


class RetentionSweeper:
    """Removes finished jobs' working files (or whole folders) ``RECON_RETENTION_S`` after they finished."""

    def __init__(self, settings: Settings, store: Store, disk: DiskUsage | None = None, storage: Storage | None = None) -> None:
        if settings.retention_s is None:
            raise ValueError("RetentionSweeper needs RECON_RETENTION_S")
        self._settings = settings
        self._store = store
        self._disk = disk
        self._storage = storage
        self._retention_s = settings.retention_s
        self.interval_s = min(60.0, max(0.5, self._retention_s / 4))
        """Seconds between sweeps: a file outlives its retention by at most this much."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # a full or unreadable disk must not stop later sweeps
                logger.exception("retention sweep failed")

    def sweep(self, now: float | None = None) -> list[Removal]:
        """One pass over MODEL_OUTPUT_ROOT; returns what was removed."""
        now = time.time() if now is None else now
        cutoff = now - self._retention_s
        removed: list[Removal] = []
        try:
            entries = list(os.scandir(self._settings.local_output_root)) if self._settings.local_output_root else []
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or not _is_job_id(entry.name):
                continue
            target = Path(entry.path) if self._settings.retention_models else Path(entry.path) / WORK_DIR
            if not target.exists():
                continue
            job = self._store.get(entry.name)
            if job is None or job.state not in (JobState.COMPLETED, JobState.FAILED) or job.finished_at is None:
                continue
            age = now - job.finished_at
            if age < self._retention_s:
                continue
            size = disk_bytes(target)
            shutil.rmtree(target, ignore_errors=True)
            if self._disk is not None:
                self._disk.forget(job.job_id)
            removed.append(Removal(job.job_id, target, size, age))
            logger.info("job=%s retention: removed %s (%d bytes), %.0f s after the job finished (RECON_RETENTION_S=%g)",
                        job.job_id, target, size, age, self._retention_s, extra=about(job.job_id))  # fmt: skip
        self._prune_logs(cutoff)
        kept = self._remove_objects(cutoff) if self._settings.retention_models else frozenset()
        rows = self._store.prune_history(cutoff, jobs=self._settings.retention_models, keep=kept)
        if any(rows.values()):
            logger.info("retention: removed from the store %s of jobs that finished over %g s ago", rows, self._retention_s)
        return removed

    def _remove_objects(self, cutoff: float) -> frozenset[str]:
        """With RECON_RETENTION_MODELS: the S3 objects (outputs, uploaded photos) of jobs finished before ``cutoff``.

        Returns the jobs whose objects could not be removed now: their records stay, to be tried again.
        """
        if self._storage is None:
            return frozenset()
        failed = set()
        for job in self._store.finished_jobs(cutoff):
            try:
                if job.model_uri is not None and job.model_uri.startswith("s3://"):
                    self._storage.outputs.remove(job.job_id)
                if job.upload_expires_at is not None:
                    self._storage.s3().delete_prefix(S3Location.parse(job.photos_dir))
            except StorageError as exc:
                logger.warning("job=%s retention could not remove its objects (tried again later): %s", job.job_id, exc.message, extra=about(job.job_id))
                failed.add(job.job_id)
        return frozenset(failed)

    def _prune_logs(self, cutoff: float) -> None:
        """Job log files of jobs finished before ``cutoff`` (or no longer in the store)."""
        folder = self._settings.data_dir / JOB_LOG_DIR
        try:
            names = [n.removesuffix(".log") for n in os.listdir(folder) if n.endswith(".log")]
        except FileNotFoundError:
            return
        for start in range(0, len(names), 500):
            for job_id in self._store.finished_before(cutoff, [n for n in names[start : start + 500] if _is_job_id(n)]):
                (folder / f"{job_id}.log").unlink(missing_ok=True)


def _is_job_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
