"""Checks of a ``POST /jobs`` body beyond its JSON shape: photos folder, options, simulate scenario.

Every problem is a 400 whose message names the field and says what is wrong (and, for counts,
both numbers). Only cheap, light-weight work happens here (no photo decoding, no heavy imports).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.errors import InvalidInput, InvalidOptions
from pipelines.ingest import PHOTO_EXTENSIONS, list_photos
from pipelines.options import DEFAULT_PRESET, build_options, options_to_dict
from recon_service.errors import ApiError
from recon_service.schemas import JobCreate
from recon_service.settings import Settings
from recon_service.store import NewJob


def canonical_request(body: JobCreate, settings: Settings) -> dict[str, Any]:
    """The payload as compared for idempotency: what was sent, minus what this service ignores."""
    request = body.model_dump()
    if not settings.simulated:
        request.pop("simulate")
    return request


def validate_submission(body: JobCreate, settings: Settings) -> NewJob:
    """A storable job, or ``ApiError(400)`` naming the first problem."""
    options = _options(body.options)
    simulate = _scenario(body.simulate) if settings.simulated else None
    photos_dir = _photos_dir(body.photos_dir, settings.photos_root)
    photos = _photos(photos_dir, settings.photos_root)
    kinds = "/".join(sorted(e.lstrip(".") for e in PHOTO_EXTENSIONS))
    if len(photos) < options["ingest.min_photos"]:
        raise ApiError(
            400, f"photos_dir: found {len(photos)} photos ({kinds}) in {photos_dir}; at least {options['ingest.min_photos']} are needed"
        )
    if len(photos) > options["ingest.max_photos"]:
        raise ApiError(
            400, f"photos_dir: found {len(photos)} photos in {photos_dir}; at most {options['ingest.max_photos']} are allowed (option ingest.max_photos)"
        )
    if body.photo_count != len(photos):
        raise ApiError(400, f"photo_count: the request says {body.photo_count} photos but photos_dir {photos_dir} holds {len(photos)}")
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


def _options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Resolve ``{"preset": ..., overrides...}`` into the flat options the job will run with."""
    raw = dict(raw or {})
    preset = raw.pop("preset", DEFAULT_PRESET)
    if not isinstance(preset, str):
        raise ApiError(400, f"options.preset: must be a string such as {DEFAULT_PRESET!r}, not {preset!r}")
    try:
        return options_to_dict(build_options(preset, raw))
    except InvalidOptions as exc:
        raise ApiError(400, f"options.{exc.key}: {exc.problem}") from None


def _scenario(raw: dict[str, Any] | None) -> dict[str, Any]:
    from pipelines.simulate import SimulateScenario

    try:
        return SimulateScenario.from_dict(raw).to_dict()
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from None


def _photos_dir(raw: str, root: Path) -> Path:
    """Resolve ``raw`` (symlinks followed) and check it is a folder inside ``root``.

    The root check comes first, so the answer says nothing about paths outside the root.
    """
    resolved = Path(raw).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(
            400, f"photos_dir: {raw} resolves to {resolved}, outside the allowed photos root {root} (RECON_PHOTOS_ROOT)"
        )
    if not resolved.exists():
        raise ApiError(400, f"photos_dir: {raw} does not exist")
    if not resolved.is_dir():
        raise ApiError(400, f"photos_dir: {raw} is not a directory")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise ApiError(400, f"photos_dir: {raw} cannot be read by the service (check its permissions)")
    return resolved


def _photos(photos_dir: Path, root: Path) -> list[Path]:
    """The photos of ``photos_dir``; a photo that is a symlink leading outside ``root`` is refused."""
    try:
        photos = list_photos(photos_dir)
    except OSError as exc:
        raise ApiError(400, f"photos_dir: cannot list {photos_dir}: {exc.strerror or exc}") from None
    for photo in photos:
        if not photo.resolve().is_relative_to(root):
            raise ApiError(400, f"photos_dir: {photo.name} links to a file outside the allowed photos root {root} (RECON_PHOTOS_ROOT)")
    return photos
