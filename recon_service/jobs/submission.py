"""Checks of a ``POST /jobs`` body beyond its JSON shape: photos folder, options, simulate scenario.

Every problem is a 400 whose message names the field and says what is wrong (and, for counts,
both numbers). Only cheap, light-weight work happens here (no photo decoding, no heavy imports).
"""

from __future__ import annotations

import math
import os
import stat
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
    options = _options(body.options, settings)
    simulate = _scenario(body.simulate) if settings.simulated else None
    photos_dir = _photos_dir(body.photos_dir, settings.photos_root)
    photos = _photos(photos_dir, settings.photos_root)
    kinds = "/".join(sorted(e.lstrip(".") for e in PHOTO_EXTENSIONS))
    if len(photos) < options["ingest.min_photos"]:
        raise ApiError(
            400, f"photos_dir: found {len(photos)} photos ({kinds}) in {photos_dir}; at least {options['ingest.min_photos']} are needed"
        )
    if len(photos) > options["ingest.max_photos"]:
        capped = ", capped by RECON_MAX_PHOTOS" if options["ingest.max_photos"] == settings.max_photos else ""
        raise ApiError(
            400,
            f"photos_dir: found {len(photos)} photos in {photos_dir}; at most {options['ingest.max_photos']} are allowed "
            f"(option ingest.max_photos{capped}); split the photos over several jobs",
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


def _options(raw: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """Resolve ``{"preset": ..., overrides...}`` into the flat options the job will run with.

    The service's own limits (RECON_MAX_PHOTOS, RECON_MAX_PIXELS) cap the matching options: a
    preset value above a limit is lowered to it, a value the request asks for above it is a 400.
    """
    raw = dict(raw or {})
    preset = raw.pop("preset", DEFAULT_PRESET)
    if not isinstance(preset, str):
        raise ApiError(400, f"options.preset: must be a string such as {DEFAULT_PRESET!r}, not {preset!r}")
    for key, value in raw.items():  # NaN passes every range check, and would make the job's JSON unanswerable
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"options.{key}: must be a finite number, not {value!r}")
    try:
        options = options_to_dict(build_options(preset, raw))
    except InvalidOptions as exc:
        raise ApiError(400, f"options.{exc.key}: {exc.problem}") from None
    for key, limit, variable in (
        ("ingest.max_photos", settings.max_photos, "RECON_MAX_PHOTOS"),
        ("ingest.max_pixels", settings.max_pixels, "RECON_MAX_PIXELS"),
    ):
        if options[key] > limit:
            if key in raw:
                raise ApiError(400, f"options.{key}: at most {limit} on this service ({variable}), not {options[key]}")
            options[key] = limit
    return options


def _scenario(raw: dict[str, Any] | None) -> dict[str, Any]:
    from pipelines.simulate import SimulateScenario

    try:
        return SimulateScenario.from_dict(raw).to_dict()
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from None


def _photos_dir(raw: str, root: Path) -> Path:
    """Resolve ``raw`` (symlinks followed) and check it is a folder inside ``root``.

    The root check comes first, so the answer says nothing about paths outside the root. A path
    the OS refuses to look at (a NUL byte, a name over 255 bytes, a symlink loop) is a 400 too.
    """
    try:
        resolved = Path(raw).resolve()
        if not resolved.is_relative_to(root):
            raise ApiError(
                400, f"photos_dir: {raw} resolves to {resolved}, outside the allowed photos root {root} (RECON_PHOTOS_ROOT)"
            )
        if not resolved.exists():
            raise ApiError(400, f"photos_dir: {raw} does not exist")
        if not resolved.is_dir():
            raise ApiError(400, f"photos_dir: {raw} is not a directory")
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: pathlib's "Symlink loop"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ApiError(400, f"photos_dir: {raw!r} is not a usable path ({reason})") from None
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise ApiError(400, f"photos_dir: {raw} cannot be read by the service (check its permissions)")
    return resolved


def _photos(photos_dir: Path, root: Path) -> list[Path]:
    """The photos of ``photos_dir``; a photo-named entry that is not a regular file inside ``root`` is refused."""
    try:
        photos = list_photos(photos_dir)
        problem = photo_problem(photos_dir, root)
    except OSError as exc:
        raise ApiError(400, f"photos_dir: cannot list {photos_dir}: {exc.strerror or exc}") from None
    if problem is not None:
        raise ApiError(400, f"photos_dir: {problem}")
    return photos


def photo_problem(photos_dir: Path, root: Path) -> str | None:
    """Why the photo-named entries of ``photos_dir`` cannot be trusted, or ``None``.

    Refused: an entry with a photo extension that leads (symlinks followed) outside ``root``, or
    that is not a regular file (a FIFO would block the reader forever, ``/dev/zero`` never ends,
    a folder is not a photo). Nothing is opened, so this is safe on hostile folders. Run at
    submission and again when a worker starts the job, since the folder may change in between.
    """
    for entry in sorted(os.scandir(photos_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in PHOTO_EXTENSIONS:
            continue
        path = Path(entry.path)
        try:
            if not path.resolve().is_relative_to(root):
                return f"{entry.name} links to a file outside the allowed photos root {root} (RECON_PHOTOS_ROOT)"
            mode = path.stat().st_mode
        except (OSError, RuntimeError) as exc:  # a dangling symlink or a symlink loop, or it vanished meanwhile
            return f"{entry.name} cannot be read ({getattr(exc, 'strerror', None) or exc}); upload it again"
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else "a socket or special file"
            return f"{entry.name} is {kind}, not a photo file; remove it and upload regular image files"
    return None
