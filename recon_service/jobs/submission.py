"""Checks of a submitted job beyond its JSON shape: photos folder, options, simulate scenario.

Every problem is a :class:`SubmissionRejected` (the API answers 400) whose message names the field
and says what is wrong (and, for counts, both numbers). Only cheap, light-weight work happens here
(no photo is opened or decoded, no heavy imports); the worker side never imports this module.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pipelines.errors import InvalidInput, InvalidOptions
from pipelines.options import DEFAULT_PRESET, build_options, options_to_dict
from pipelines.photos import PHOTO_KINDS, PhotoFolder
from recon_service.contract import JobCreate
from recon_service.jobs.records import NewJob
from recon_service.settings import Settings


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


def validate_submission(body: JobCreate, settings: Settings) -> NewJob:
    """A storable job, or :class:`SubmissionRejected` naming the first problem."""
    options = _options(body.options, settings)
    simulate = _scenario(body.simulate) if settings.simulated else None
    photos_dir = _photos_dir(body.photos_dir, settings.photos_root)
    photos = _photos(photos_dir, options["ingest.max_photo_bytes"])
    if len(photos) < options["ingest.min_photos"]:
        raise SubmissionRejected(
            f"photos_dir: found {len(photos)} photos ({PHOTO_KINDS}) in {photos_dir}; at least {options['ingest.min_photos']} are needed"
        )
    if len(photos) > options["ingest.max_photos"]:
        capped = ", capped by RECON_MAX_PHOTOS" if options["ingest.max_photos"] == settings.max_photos else ""
        raise SubmissionRejected(
            f"photos_dir: found {len(photos)} photos in {photos_dir}; at most {options['ingest.max_photos']} are allowed "
            f"(option ingest.max_photos{capped}); split the photos over several jobs",
        )
    if body.photo_count != len(photos):
        raise SubmissionRejected(f"photo_count: the request says {body.photo_count} photos but photos_dir {photos_dir} holds {len(photos)}")
    return NewJob(
        job_id=body.job_id,
        request=canonical_request(body, settings),
        dataset_name=body.dataset_name,
        photo_count=body.photo_count,
        photos_dir=str(photos_dir),
        notes=body.notes,
        options=options,
        simulate=simulate,
    )


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
