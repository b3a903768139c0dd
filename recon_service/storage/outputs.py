"""Where a finished attempt's artifacts go: the local output folder, or objects under ``MODEL_OUTPUT_ROOT`` on S3.

An attempt writes into its own local folder (``Settings.attempt_dir``); :meth:`Outputs.publish`
makes that the job's output, so that ``model_uri`` never points at a missing, partial or mixed model:

* local: one rename of the attempt folder to ``MODEL_OUTPUT_ROOT/<job_id>/`` (work files included);
* S3: every artifact's files uploaded under ``<prefix>/<job_id>/``, ``model.glb`` last, then the
  local folder removed; if anything cannot be stored after the retries, everything already
  uploaded for the job is deleted again and :class:`~recon_service.storage.s3.StorageError` says
  the model could not be stored. Work files (``work/``) are not uploaded.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from recon_service.settings import Settings
from recon_service.storage.s3 import S3, StorageError
from recon_service.storage.uri import S3Location

MODEL = "model.glb"
CONTENT_TYPES = {".glb": "model/gltf-binary", ".usdz": "model/vnd.usdz+zip"}
"""Types the standard library may not know; AR Quick Look opens a USDZ link by its type."""
STORED_BYTES_CACHE_S = 30.0
"""How long a measured ``stored_bytes`` of a job is reused (listing objects costs a round trip)."""


@dataclass(frozen=True)
class Published:
    model_uri: str
    artifacts: dict[str, str]
    """Artifact name → URI (``file://`` or ``s3://``; a folder's URI ends with ``/``)."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Artifact name → bytes (a folder: the sum of its files)."""


class Outputs(Protocol):
    def publish(self, job_id: str, attempt_dir: Path, model: Path, artifacts: dict[str, Path]) -> Published:
        """Make the finished attempt in ``attempt_dir`` the job's output."""

    def remove(self, job_id: str) -> None:
        """Remove the job's whole output (retention, cancel); nothing if there is none."""

    def links(self, model_uri: str | None, artifacts: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """(model_url, artifact_urls): pre-signed HTTPS GETs, fresh; ``(None, {})`` where there is nothing to sign."""

    def stored_bytes(self, job_id: str) -> int | None:
        """Bytes of the job's stored objects (S3); ``None`` for local storage (``disk_bytes`` says it)."""

    def problem(self) -> str | None:
        """Why outputs cannot be written now (for ``/readyz``), or ``None``."""


class LocalOutputs:
    """MODEL_OUTPUT_ROOT is a local folder (the embedded default)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def publish(self, job_id: str, attempt_dir: Path, model: Path, artifacts: dict[str, Path]) -> Published:
        sizes = artifact_sizes(artifacts)
        final = self._settings.job_output_dir(job_id)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(attempt_dir, final)  # one rename: the job's folder holds one attempt, whole

        def moved(path: Path) -> str:
            return (final / Path(path).resolve().relative_to(attempt_dir.resolve())).as_uri()

        return Published(moved(model), {name: moved(path) for name, path in artifacts.items()}, sizes)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self._settings.job_output_dir(job_id), ignore_errors=True)

    def links(self, model_uri: str | None, artifacts: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        return None, {}

    def stored_bytes(self, job_id: str) -> int | None:
        return None

    def problem(self) -> str | None:
        root = self._settings.local_output_root
        assert root is not None
        writable = os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK)
        return None if writable else f"{root} is not writable (MODEL_OUTPUT_ROOT)"


class S3Outputs:
    """MODEL_OUTPUT_ROOT is ``s3://bucket/prefix``: each job's artifacts are objects under ``prefix/<job_id>/``."""

    def __init__(self, settings: Settings, s3: S3 | None = None) -> None:
        assert settings.output_s3 is not None
        self._settings = settings
        self._root = settings.output_s3
        self._s3 = s3 or S3(settings)
        self._sizes: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def location(self, job_id: str) -> S3Location:
        return self._root.child(job_id)

    def publish(self, job_id: str, attempt_dir: Path, model: Path, artifacts: dict[str, Path]) -> Published:
        where = self.location(job_id)
        files = _files_of(attempt_dir, artifacts)
        model_rel = Path(model).resolve().relative_to(attempt_dir.resolve()).as_posix()
        order = sorted(files, key=lambda rel: rel == model_rel)  # the model last: its URI never points at nothing
        try:
            self._s3.delete_prefix(where)  # what an earlier, interrupted attempt may have left
            for rel in order:
                kind = CONTENT_TYPES.get(Path(rel).suffix) or mimetypes.guess_type(rel)[0] or "application/octet-stream"
                self._s3.upload(attempt_dir / rel, where.bucket, where.child(rel).key, kind)
        except StorageError as exc:
            try:
                self._s3.delete_prefix(where)
            except StorageError:
                pass  # the store is down for good: the prefix holds no model.glb, so nothing points at it
            raise StorageError(f"the model could not be stored in {where.uri}/: {exc.message}", transient=exc.transient) from exc
        uris = {}
        for name, path in artifacts.items():
            rel = Path(path).resolve().relative_to(attempt_dir.resolve()).as_posix()
            uris[name] = where.child(rel).uri + ("/" if Path(path).is_dir() else "")
        sizes = artifact_sizes(artifacts)
        shutil.rmtree(attempt_dir, ignore_errors=True)
        return Published(where.child(model_rel).uri, uris, sizes)

    def remove(self, job_id: str) -> None:
        self._s3.delete_prefix(self.location(job_id))
        with self._lock:
            self._sizes.pop(job_id, None)

    def links(self, model_uri: str | None, artifacts: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        ttl = self._settings.presign_ttl_s
        model_url = self._sign(model_uri, ttl) if model_uri and model_uri.startswith("s3://") else None
        urls: dict[str, str] = {}
        for name, uri in artifacts.items():
            if not uri.startswith("s3://"):
                continue
            if uri.endswith("/"):  # a folder artifact (sparse/): one link per file
                location = S3Location.parse(uri)
                for obj in self._s3.list(location, recursive=True):
                    rel = obj.key[len(location.key_prefix):]
                    urls[f"{name}/{rel}"] = self._s3.presign_get(location.bucket, obj.key, ttl)
            else:
                urls[name] = self._sign(uri, ttl)
        return model_url, urls

    def _sign(self, uri: str, ttl: int) -> str:
        parts = urlsplit(uri)
        return self._s3.presign_get(parts.netloc, parts.path.lstrip("/"), ttl)

    def stored_bytes(self, job_id: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            hit = self._sizes.get(job_id)
        if hit is not None and now - hit[0] < STORED_BYTES_CACHE_S:
            return hit[1]
        try:
            size = sum(o.size for o in self._s3.list(self.location(job_id), recursive=True))
        except StorageError:
            return None
        with self._lock:
            self._sizes[job_id] = (now, size)
        return size

    def problem(self) -> str | None:
        try:
            self._s3.check_bucket(self._root.bucket)
        except StorageError as exc:
            return f"{exc.message} (MODEL_OUTPUT_ROOT={self._root.uri})"
        return None


def artifact_sizes(artifacts: dict[str, Path]) -> dict[str, int]:
    """Bytes of each artifact; a folder's is the sum of its files."""
    sizes = {}
    for name, path in artifacts.items():
        path = Path(path)
        sizes[name] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return sizes


def _files_of(root: Path, artifacts: dict[str, Path]) -> list[str]:
    """Every file of the artifacts (folders walked), as paths relative to ``root``."""
    found: list[str] = []
    for path in artifacts.values():
        path = Path(path)
        items = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p.resolve().relative_to(root.resolve()).as_posix() for p in items]
    return sorted(set(found))


def open_outputs(settings: Settings) -> Outputs:
    """The outputs of ``settings``: local (MODEL_OUTPUT_ROOT a folder) or S3 (``s3://``)."""
    return S3Outputs(settings) if settings.output_s3 is not None else LocalOutputs(settings)
