"""Pre-signed uploads: which photos a job expects, what its commit checks, and jobs never committed.

A job submitted with ``upload: true`` waits (status ``queued``, stage ``upload``) while the backend
PUTs ``photo_1.jpg`` ... ``photo_<N>.jpg`` to pre-signed URLs under
``<RECON_UPLOAD_ROOT>/<job_id>/``. Its commit checks what arrived -- every expected photo, nothing
too large, each an image -- and lets it run; :class:`UploadExpiry` fails the jobs not committed
within ``RECON_UPLOAD_TTL_S`` and removes what was uploaded for them.
"""

from __future__ import annotations

import logging
import threading
import time

from recon_service.jobs.records import JobRecord
from recon_service.jobs.store import Store
from recon_service.logs import about
from recon_service.settings import Settings
from recon_service.storage.clients import Storage
from recon_service.storage.photos import PhotosRefused, check_photos
from recon_service.storage.s3 import StorageError
from recon_service.storage.uri import S3Location

logger = logging.getLogger(__name__)

UPLOAD_CONTENT_TYPE = "image/jpeg"


class UploadIncomplete(ValueError):
    """What is missing or wrong in a job's upload; the message names the photos."""


def expected_names(photo_count: int) -> list[str]:
    """The names the backend uploads: ``photo_1.jpg`` ... ``photo_<N>.jpg`` (as it stores photos)."""
    return [f"photo_{i}.jpg" for i in range(1, photo_count + 1)]


def check_upload(storage: Storage, job: JobRecord) -> None:
    """Every expected photo arrived, none too large, each an image; :class:`UploadIncomplete` otherwise."""
    location = S3Location.parse(job.photos_dir)
    try:
        found = check_photos(storage.s3(), location, max_bytes=int(job.options["ingest.max_photo_bytes"]), check_content=True)
    except PhotosRefused as exc:
        if "holds no photos" in str(exc):
            raise UploadIncomplete(f"none of the {job.photo_count} photos has arrived in {location.uri}/ yet; upload them, then commit") from None
        raise UploadIncomplete(str(exc)) from None
    except StorageError as exc:
        raise UploadIncomplete(f"the upload cannot be checked: {exc.message}") from None
    names = {o.name for o in found}
    missing = [n for n in expected_names(job.photo_count) if n not in names]
    extra = sorted(names - set(expected_names(job.photo_count)))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UploadIncomplete(f"{len(missing)} of {job.photo_count} photos have not arrived in {location.uri}/: {shown}")
    if extra:
        raise UploadIncomplete(f"{location.uri}/ holds photos the job did not ask for: {', '.join(extra[:10])}; upload only photo_1.jpg ... photo_{job.photo_count}.jpg")


def remove_upload(storage: Storage, job: JobRecord) -> None:
    """Delete what was uploaded for ``job`` (best effort: an unreachable store is logged, not raised)."""
    if job.upload_expires_at is None:
        return
    try:
        storage.s3().delete_prefix(S3Location.parse(job.photos_dir))
    except StorageError as exc:
        logger.warning("job=%s could not remove its uploaded photos: %s", job.job_id, exc.message, extra=about(job.job_id))


class UploadExpiry:
    """Fails the jobs whose pre-signed upload was not committed in time (a thread of the API process)."""

    def __init__(self, settings: Settings, store: Store, storage: Storage) -> None:
        self._settings, self._store, self._storage = settings, store, storage
        self.interval_s = min(60.0, max(0.5, settings.upload_ttl_s / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.expire()
            except Exception:  # a busy store must not stop later passes
                logger.exception("upload expiry failed")

    def expire(self, now: float | None = None) -> list[str]:
        message = (
            f"no photos were committed within {self._settings.upload_ttl_s:g} s of the job's creation (RECON_UPLOAD_TTL_S); "
            "upload them again with a new job_id"
        )
        expired = self._store.expire_uploads(time.time() if now is None else now, message)
        for job_id in expired:
            logger.info("job=%s upload not committed in time; failed", job_id, extra=about(job_id))
            job = self._store.get(job_id)
            if job is not None:
                remove_upload(self._storage, job)
        return expired
