"""Ingest: find, read, orient, check and downscale the photos (stage 1).

``list_photos`` is cheap (no decoding) so the service can count photos when a job is submitted.
"""

from __future__ import annotations

from pathlib import Path

PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".heic", ".heif"})


def list_photos(photos_dir: Path) -> list[Path]:
    """Regular files in ``photos_dir`` (not recursive) whose extension is a photo's, sorted by name.

    Hidden files (``.DS_Store``, ``._IMG_0001.JPG``) are ignored. Nothing is decoded here; the
    ingest stage itself skips unreadable photos with a reason.
    """
    photos = []
    for path in sorted(Path(photos_dir).iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in PHOTO_EXTENSIONS and path.is_file():
            photos.append(path)
    return photos
