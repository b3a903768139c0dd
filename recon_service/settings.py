"""Service configuration: one validated ``Settings``, loaded once from the environment.

Every variable is read here and nowhere else; the rest of the service receives a ``Settings``
object explicitly (``create_app(settings)``, ``run_job(job_id, settings)``). Errors name the
environment variable, not the Python field, so an operator knows what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True, populate_by_name=True, frozen=True
    )

    service_token: SecretStr | None = Field(None, description="Bearer token the backend must send; generated at start-up when unset.")
    callback_url: str | None = Field(None, description="Backend base URL for status/progress callbacks; no callbacks when unset.")
    callback_token: SecretStr | None = Field(None, description="Bearer token sent with every callback.")
    model_output_root: Path = Field(
        Path("data/models"),
        validation_alias=AliasChoices("MODEL_OUTPUT_ROOT", "model_output_root"),
        description="Where each job's output folder <job_id>/ (model.glb and other artifacts) is written.",
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
    retention_models: bool = Field(False, description="With RECON_RETENTION_S: remove finished jobs' whole output folder (model.glb too), not only work/.")

    @field_validator("model_output_root", "photos_root", "data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

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
        return self

    @property
    def simulated(self) -> bool:
        return self.pipeline == "simulate"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    def job_output_dir(self, job_id: str) -> Path:
        """``MODEL_OUTPUT_ROOT/<job_id>/``: where the job's model.glb and other artifacts go."""
        return self.model_output_root / job_id

    @property
    def attempts_root(self) -> Path:
        """``MODEL_OUTPUT_ROOT/.attempts/``: each running attempt's own folder, on the output's filesystem."""
        return self.model_output_root / ATTEMPTS_DIR

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
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
