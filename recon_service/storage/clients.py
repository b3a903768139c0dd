"""The service's storage, made on first use: the outputs (local or S3) and the S3 client for photos and uploads.

boto3 takes about a second to import and build a client, so nothing of it is touched until a
job, a request or a readiness check needs the object store; a service on local storage never
imports it.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property

from recon_service.settings import Settings
from recon_service.storage.outputs import Outputs, open_outputs
from recon_service.storage.s3 import S3, StorageError

PROBLEM_CACHE_S = 10.0
"""How long a storage readiness answer is reused (``/readyz`` may be polled every second)."""


class Storage:
    """One per process: ``outputs`` and, where S3 is used, ``s3()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._s3: S3 | None = None
        self._problem: tuple[float, str | None] | None = None

    def s3(self) -> S3:
        """The S3 client (``StorageError`` when boto3 is not installed)."""
        with self._lock:
            if self._s3 is None:
                try:
                    self._s3 = S3(self.settings)
                except ImportError:
                    raise StorageError("the object store needs boto3, which is not installed: pip install 'recon-service[s3]'") from None
            return self._s3

    @cached_property
    def outputs(self) -> Outputs:
        if self.settings.output_s3 is not None:
            from recon_service.storage.outputs import S3Outputs

            return S3Outputs(self.settings, self.s3())
        return open_outputs(self.settings)

    def problem(self) -> str | None:
        """Why jobs' outputs or uploads cannot be stored now, or ``None`` (cached briefly)."""
        now = time.monotonic()
        cached = self._problem
        if cached is not None and now - cached[0] < PROBLEM_CACHE_S:
            return cached[1]
        try:
            problem = self.outputs.problem()
            upload = self.settings.upload_location
            if problem is None and upload is not None and upload.bucket != getattr(self.settings.output_s3, "bucket", None):
                self.s3().check_bucket(upload.bucket)
        except StorageError as exc:
            problem = f"{exc.message} (RECON_UPLOAD_ROOT)"
        self._problem = (now, problem)
        return problem
