"""Checks of a submitted job beyond its JSON shape: photos folder, options, simulate scenario.

Every problem is a :class:`SubmissionRejected` (the API answers 400) whose message names the field
and says what is wrong (and, for counts, both numbers). Only cheap, light-weight work happens here
(no photo is opened or decoded, no heavy imports); the worker side never imports this module.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import InvalidInput, InvalidOptions
from pipelines.options import DEFAULT_PRESET, build_options, options_to_dict
from pipelines.photos import PHOTO_KINDS, PhotoFolder
from recon_service.contract import JobCreate
from recon_service.jobs.records import NewJob
from recon_service.settings import Settings
from recon_service.storage.photos import PhotosRefused, check_photos
from recon_service.storage.s3 import StorageError
from recon_service.storage.uri import InvalidLocation, S3Location

if TYPE_CHECKING:
    from recon_service.storage.s3 import S3


class SubmissionRejected(ValueError):
    """A submission that cannot be accepted; the message names the field and what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def canonical_request(body: JobCreate, settings: Settings) -> dict[str, Any]:
    """The payload as compared for idempotency: what was sent, minus what this service ignores."""
    request = body.model_dump()
    if not settings.simulated:
        request.pop("simulate")
    return request


def validate_submission(body: JobCreate, settings: Settings, s3: Callable[[], S3] | None = None) -> NewJob:
    """A storable job, or :class:`SubmissionRejected` naming the first problem.

    ``s3`` gives the service's object-store client, for ``photos_dir`` on S3 and pre-signed uploads.
    """
    options = _options(body.options, settings)
    if body.real_size_m is not None:
        asked = (body.options or {}).get("export.real_size_m")
        if asked not in (None, 0, 0.0, body.real_size_m):
            raise SubmissionRejected(f"real_size_m: {body.real_size_m} m disagrees with options.export.real_size_m = {asked}; send one of them")
        options["export.real_size_m"] = body.real_size_m
    simulate = _scenario(body.simulate) if settings.simulated else None
    upload_expires_at = None
    if body.upload:
        photos_dir = _upload_location(body, settings, options)
        upload_expires_at = time.time() + settings.upload_ttl_s
    elif body.photos_dir is not None and body.photos_dir.startswith("s3://"):
        photos_dir = _s3_photos(body.photos_dir, body.photo_count, options, settings, s3)
    else:
        assert body.photos_dir is not None  # JobCreate requires photos_dir or upload
        folder = _photos_dir(body.photos_dir, settings.photos_root)
        _check_count(len(_photos(folder, options["ingest.max_photo_bytes"])), body.photo_count, options, settings, str(folder))
        photos_dir = str(folder)
    return NewJob(
        job_id=body.job_id,
        request=canonical_request(body, settings),
        dataset_name=body.dataset_name,
        photo_count=body.photo_count,
        photos_dir=photos_dir,
        notes=body.notes,
        options=options,
        simulate=simulate,
        upload_expires_at=upload_expires_at,
    )


def _check_count(found: int, photo_count: int, options: dict[str, Any], settings: Settings, where: str) -> None:
    """Enough photos, not too many, and as many as the request says."""
    if found < options["ingest.min_photos"]:
        raise SubmissionRejected(f"photos_dir: found {found} photos ({PHOTO_KINDS}) in {where}; at least {options['ingest.min_photos']} are needed")
    if found > options["ingest.max_photos"]:
        capped = ", capped by RECON_MAX_PHOTOS" if options["ingest.max_photos"] == settings.max_photos else ""
        raise SubmissionRejected(
            f"photos_dir: found {found} photos in {where}; at most {options['ingest.max_photos']} are allowed "
            f"(option ingest.max_photos{capped}); split the photos over several jobs",
        )
    if photo_count != found:
        raise SubmissionRejected(f"photo_count: the request says {photo_count} photos but photos_dir {where} holds {found}")


def _upload_location(body: JobCreate, settings: Settings, options: dict[str, Any]) -> str:
    """Where the photos of ``upload: true`` go: ``<RECON_UPLOAD_ROOT>/<job_id>`` (the job id is a checked UUID)."""
    root = settings.upload_location
    if root is None:
        raise SubmissionRejected("upload: pre-signed uploads need object storage; set RECON_UPLOAD_ROOT=s3://bucket/prefix (or MODEL_OUTPUT_ROOT on S3)")
    _check_count(body.photo_count, body.photo_count, options, settings, "the upload")
    return root.child(body.job_id).uri


def _s3_photos(uri: str, photo_count: int, options: dict[str, Any], settings: Settings, s3: Callable[[], S3] | None) -> str:
    """``photos_dir`` on S3: the bucket answers, the prefix holds the photos, count and sizes are right."""
    try:
        location = S3Location.parse(uri)
    except InvalidLocation as exc:
        raise SubmissionRejected(f"photos_dir: {exc}") from None
    if s3 is None:
        raise SubmissionRejected(f"photos_dir: {uri} is on S3, but this service has no object store client (install recon-service[s3])")
    try:
        photos = check_photos(s3(), location, max_bytes=options["ingest.max_photo_bytes"])
    except (StorageError, PhotosRefused) as exc:
        raise SubmissionRejected(f"photos_dir: {exc}") from None
    _check_count(len(photos), photo_count, options, settings, location.uri)
    return location.uri


def _options(raw: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """Resolve ``{"preset": ..., overrides...}`` into the flat options the job will run with.

    The service's own limits (RECON_MAX_PHOTOS, RECON_MAX_PIXELS) cap the matching options: a
    preset value above a limit is lowered to it, a value the request asks for above it is a 400.
    """
    raw = dict(raw or {})
    preset = raw.pop("preset", DEFAULT_PRESET)
    if not isinstance(preset, str):
        raise SubmissionRejected(f"options.preset: must be a string such as {DEFAULT_PRESET!r}, not {preset!r}")
    for key, value in raw.items():  # NaN passes every range check, and would make the job's JSON unanswerable
        if isinstance(value, float) and not math.isfinite(value):
            raise SubmissionRejected(f"options.{key}: must be a finite number, not {value!r}")
    try:
        options = options_to_dict(build_options(preset, raw))
    except InvalidOptions as exc:
        raise SubmissionRejected(f"options.{exc.key}: {exc.problem}") from None
    for key, limit, variable in (
        ("ingest.max_photos", settings.max_photos, "RECON_MAX_PHOTOS"),
        ("ingest.max_pixels", settings.max_pixels, "RECON_MAX_PIXELS"),
        ("ingest.max_photo_bytes", settings.max_photo_bytes, "RECON_MAX_PHOTO_BYTES"),
    ):
        if options[key] > limit:
            if key in raw:
                raise SubmissionRejected(f"options.{key}: at most {limit} on this service ({variable}), not {options[key]}")
            options[key] = limit
    if options["ingest.min_photos"] > options["ingest.max_photos"]:
        raise SubmissionRejected(f"options.ingest.min_photos: {options['ingest.min_photos']} is more than this service allows per job "
                                 f"({options['ingest.max_photos']}, RECON_MAX_PHOTOS)")  # fmt: skip
    if options["dense.backend"] == "cuda" and not _cuda_here(settings):
        raise SubmissionRejected(
            "options.dense.backend: 'cuda' needs a CUDA build of pycolmap and an NVIDIA GPU, and this service has neither; "
            "use 'auto' or 'cpu' (GET /options lists what this service can run)"
        )
    return options


def _cuda_here(settings: Settings) -> bool:
    """The simulate double runs no stage: it offers what a CPU-only host offers."""
    from pipelines.stack import cuda_available

    return not settings.simulated and cuda_available()


def _scenario(raw: dict[str, Any] | None) -> dict[str, Any]:
    from pipelines.simulate import SimulateScenario

    try:
        return SimulateScenario.from_dict(raw).to_dict()
    except InvalidInput as exc:
        raise SubmissionRejected(str(exc)) from None


def _photos_dir(raw: str, root: Path) -> Path:
    """Resolve ``raw`` (symlinks followed) and check it is a folder inside ``root``.

    The root check comes first, so the answer says nothing about paths outside the root. A path
    the OS refuses to look at (a NUL byte, a name over 255 bytes, a symlink loop) is a 400 too.
    """
    try:
        resolved = Path(raw).resolve()
        if not resolved.is_relative_to(root):
            raise SubmissionRejected(
                f"photos_dir: {raw} resolves to {resolved}, outside the allowed photos root {root} (RECON_PHOTOS_ROOT)"
            )
        if not resolved.exists():
            raise SubmissionRejected(f"photos_dir: {raw} does not exist")
        if not resolved.is_dir():
            raise SubmissionRejected(f"photos_dir: {raw} is not a directory")
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: pathlib's "Symlink loop"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SubmissionRejected(f"photos_dir: {raw!r} is not a usable path ({reason})") from None
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise SubmissionRejected(f"photos_dir: {raw} cannot be read by the service (check its permissions)")
    return resolved


def _photos(photos_dir: Path, max_bytes: int) -> list[str]:
    """The photo names of ``photos_dir``; an entry named like a photo that is not a regular file
    (a link, FIFO, device or folder) or is too large is refused, naming it. Nothing is opened."""
    try:
        with PhotoFolder(photos_dir, max_bytes=max_bytes) as folder:
            names = folder.names()
            problems = folder.problems()
    except OSError as exc:
        raise SubmissionRejected(f"photos_dir: cannot list {photos_dir}: {exc.strerror or exc}") from None
    if problems:
        name, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SubmissionRejected(f"photos_dir: {name} {problem}{more}")
    return names
