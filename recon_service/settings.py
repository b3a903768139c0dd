"""Service configuration: one validated ``Settings``, loaded once from the environment.

Every variable is read here and nowhere else; the rest of the service receives a ``Settings``
object explicitly (``create_app(settings)``, ``run_job(job_id, settings)``). Errors name the
environment variable, not the Python field, so an operator knows what to fix.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recon_service.storage.uri import S3Location, parse_output_root

ENV_PREFIX = "RECON_"
ATTEMPTS_DIR = ".attempts"


class SettingsError(ValueError):
    """The environment does not describe a valid configuration; the message names the variable."""


class Settings(BaseSettings):
    """Everything the service, its workers and its callback sender need to know.

    Paths are made absolute when loaded (relative to the working directory at start-up), so a
    worker process sees the same directories as the server.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True, populate_by_name=True, frozen=True, arbitrary_types_allowed=True
    )

    service_token: SecretStr | None = Field(None, description="Bearer token the backend must send; generated at start-up when unset.")
    callback_url: str | None = Field(None, description="Backend base URL for status/progress callbacks; no callbacks when unset.")
    callback_token: SecretStr | None = Field(None, description="Bearer token sent with every callback.")
    model_output_root: Path | S3Location = Field(
        Path("data/models"),
        validation_alias=AliasChoices("MODEL_OUTPUT_ROOT", "model_output_root"),
        description="Where each job's output <job_id>/ (model.glb and other artifacts) goes: a local folder, or s3://bucket/prefix.",
    )
    photos_root: Path = Field(Path("data/uploads"), description="Jobs' photos_dir must resolve (symlinks followed) inside this folder.")
    data_dir: Path = Field(Path("data"), description="Holds the SQLite job store (jobs.sqlite3).")
    max_workers: int = Field(1, ge=1, le=64, description="Reconstructions running at once, each in its own process.")
    job_timeout_s: float = Field(4 * 3600.0, gt=0, description="A job running longer than this (seconds) is stopped and failed.")
    callback_max_age_s: float = Field(24 * 3600.0, gt=0, description="Give up delivering a callback this many seconds after it was queued.")
    host: str = Field("127.0.0.1", min_length=1, description="Address the HTTP server listens on.")
    port: int = Field(9000, ge=0, le=65535, description="Port the HTTP server listens on.")
    pipeline: Literal["real", "simulate"] = Field("real", description="'real' photogrammetry, or 'simulate' (fast contract double for CI).")
    callback_retry_initial_s: float = Field(1.0, gt=0, le=3600, description="First retry delay of a failed callback (seconds); doubles each time.")
    callback_retry_max_s: float = Field(300.0, gt=0, le=86400, description="Longest delay between two tries of one callback (seconds).")
    progress_callback_interval_s: float = Field(2.0, ge=0, le=3600, description="At most one progress callback per job per this many seconds.")
    cancel_grace_s: float = Field(
        2.5, gt=0, le=3.5, description="After a cancel, seconds the pipeline gets to stop by itself before its process is terminated (<= 3.5: a cancel ends within 5 s)."
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest accepted request body (bytes); larger ones get 413.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of the service and its workers.")
    log_format: Literal["json", "text"] = Field("json", description="stderr log lines: one JSON object per line (with job_id and stage), or text for people.")
    callback_timeout_s: float = Field(10.0, gt=0, le=600, description="Seconds the backend gets to answer one callback before it counts as failed and is retried.")
    max_photos: int = Field(1000, ge=3, description="Most photos one job may have, whatever its options say (caps option ingest.max_photos).")
    max_pixels: int = Field(
        200_000_000, ge=1_000_000, description="Largest decoded size of one photo in pixels, whatever a job's options say (caps option ingest.max_pixels)."
    )
    retention_s: float | None = Field(
        None, gt=0, description="Finished jobs' working files (<job_id>/work/) are removed this many seconds after they finished; unset: kept."
    )
    worker_priority: Literal["idle", "low", "normal"] = Field(
        "idle",
        description="CPU priority of pipeline workers: idle (SCHED_IDLE: only CPU time the API does not want), low (nice 10) or normal.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (MinIO, Ceph, R2, GCS interoperability); unset: AWS S3. Credentials and region: the standard AWS variables.")
    s3_timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of every S3 call (seconds).")
    s3_retries: int = Field(5, ge=1, le=20, description="Tries of each S3 upload or download before the job fails (with exponential backoff).")
    presign_ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600, description="Lifetime of pre-signed upload and download URLs (seconds).")
    upload_root: S3Location | None = Field(
        None, description="s3://bucket/prefix where pre-signed uploads go (<prefix>/<job_id>/photo_#.jpg); default: <output bucket>/uploads when MODEL_OUTPUT_ROOT is on S3."
    )
    upload_ttl_s: float = Field(24 * 3600.0, gt=0, description="A job created for a pre-signed upload that is not committed within this many seconds fails.")
    scratch_dir: Path | None = Field(None, description="Local working space of jobs whose photos or outputs are on S3 (downloads, attempt folders); default RECON_DATA_DIR/scratch.")
    max_photo_bytes: int = Field(
        100_000_000, ge=100_000, description="Largest photo file or object (bytes), whatever a job's options say (caps option ingest.max_photo_bytes)."
    )
    executor: Literal["local", "celery"] = Field(
        "local", description="Who runs jobs: 'local' worker processes on this host, or 'celery' workers on any host (recon-worker) through RECON_BROKER_URL."
    )
    broker_url: str | None = Field(
        None, description="Redis URL of the Celery broker and worker events (redis://host:6379/0); needed with RECON_EXECUTOR=celery and by recon-worker."
    )
    worker_queues: str = Field(
        "preview,default", description="recon-worker: the queues it takes jobs from, comma-separated (preview jobs go to 'preview', the rest to 'default')."
    )
    worker_lease_s: float = Field(
        10.0, ge=2, le=600, description="A Celery worker that has not renewed its job's lease for this long is lost: the job runs again elsewhere."
    )
    retention_models: bool = Field(False, description="With RECON_RETENTION_S: remove finished jobs' whole output folder (model.glb too), not only work/.")

    @field_validator("model_output_root", mode="before")
    @classmethod
    def _output_root(cls, value: object) -> object:
        return parse_output_root(value)

    @field_validator("upload_root", mode="before")
    @classmethod
    def _upload_root(cls, value: object) -> object:
        return S3Location.parse(value) if isinstance(value, str) else value  # type: ignore[arg-type]

    @field_validator("model_output_root", "photos_root", "data_dir", "scratch_dir")
    @classmethod
    def _absolute(cls, value: Path | S3Location | None) -> Path | S3Location | None:
        return value.expanduser().resolve() if isinstance(value, Path) else value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"must be an http(s) URL such as http://minio:9000, not {value!r}")
        return value

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) base URL such as http://backend:8000, not {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _callback_token_with_url(self) -> Settings:
        if self.callback_url and self.callback_token is None:
            raise ValueError(
                "RECON_CALLBACK_TOKEN must be set when RECON_CALLBACK_URL is set (the backend rejects unauthenticated callbacks)"
            )
        if self.callback_retry_initial_s > self.callback_retry_max_s:
            raise ValueError("RECON_CALLBACK_RETRY_INITIAL_S must not exceed RECON_CALLBACK_RETRY_MAX_S")
        if self.executor == "celery" and not self.broker_url:
            raise ValueError("RECON_EXECUTOR=celery needs RECON_BROKER_URL (e.g. redis://redis:6379/0)")
        if self.broker_url is not None and urlsplit(self.broker_url).scheme not in ("redis", "rediss"):
            raise ValueError(f"RECON_BROKER_URL: must be a redis:// or rediss:// URL, not {self.broker_url!r}")
        if self.broker_url is not None and (importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None):
            raise ValueError("RECON_BROKER_URL: Celery and redis are not installed: pip install 'recon-service[celery]'")
        if (self.output_s3 or self.upload_root) and importlib.util.find_spec("boto3") is None:
            raise ValueError(
                "MODEL_OUTPUT_ROOT / RECON_UPLOAD_ROOT on S3 need boto3, which is not installed: pip install 'recon-service[s3]'"
            )
        return self

    @property
    def simulated(self) -> bool:
        return self.pipeline == "simulate"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def output_s3(self) -> S3Location | None:
        """MODEL_OUTPUT_ROOT when it is on S3, else ``None``."""
        return self.model_output_root if isinstance(self.model_output_root, S3Location) else None

    @property
    def local_output_root(self) -> Path | None:
        """MODEL_OUTPUT_ROOT when it is a local folder, else ``None``."""
        return self.model_output_root if isinstance(self.model_output_root, Path) else None

    @property
    def upload_location(self) -> S3Location | None:
        """Where pre-signed uploads go: RECON_UPLOAD_ROOT, or ``<output bucket>/uploads``; ``None`` without S3."""
        if self.upload_root is not None:
            return self.upload_root
        return S3Location(self.output_s3.bucket, "uploads") if self.output_s3 is not None else None

    @property
    def scratch_root(self) -> Path:
        """RECON_SCRATCH_DIR, or RECON_DATA_DIR/scratch."""
        return self.scratch_dir if self.scratch_dir is not None else self.data_dir / "scratch"

    def job_output_dir(self, job_id: str) -> Path:
        """``MODEL_OUTPUT_ROOT/<job_id>/`` on local storage: where the job's model.glb and other artifacts go."""
        if self.local_output_root is None:
            raise RuntimeError("MODEL_OUTPUT_ROOT is on S3: a job's output is objects, not a local folder")
        return self.local_output_root / job_id

    @property
    def attempts_root(self) -> Path:
        """Each running attempt's own folder: ``MODEL_OUTPUT_ROOT/.attempts/`` (the output's filesystem, for
        one rename), or with S3 outputs ``<scratch>/attempts/`` (uploaded from there)."""
        root = self.local_output_root
        return root / ATTEMPTS_DIR if root is not None else self.scratch_root / "attempts"

    def attempt_dir(self, job_id: str, attempt: int | str) -> Path:
        """Where attempt ``attempt`` of the job writes while it runs: no other attempt (a stale one that
        has not noticed yet) can ever touch it. It becomes ``job_output_dir`` only when it succeeded."""
        return self.attempts_root / f"{job_id}.{attempt}"


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment), or ``SettingsError`` naming the variable."""
    try:
        if env is None:
            return Settings()
        # Build from an explicit mapping (tests, tools) with the same aliases and validation.
        known = {env_name(f): f for f in Settings.model_fields}
        values = {known[k.upper()]: v for k, v in env.items() if k.upper() in known and v != ""}
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            field = str(loc[0]) if loc else ""
            name = env_name(field) if field in Settings.model_fields else (field or "configuration")
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(msg if not loc else f"{name}: {msg}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
