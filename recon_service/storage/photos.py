"""Photos that live in a bucket: checked at submission (or commit), downloaded by the worker that runs the job.

A photo folder on S3 is the objects directly under ``s3://bucket/prefix/`` whose names are photo
names (``pipelines.photos.is_photo_name``). The checks mirror a local folder's -- count, size limit
-- and, for a pre-signed upload, that each object starts like a JPEG, PNG or HEIC file.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.photos import PHOTO_KINDS, is_photo_name
from recon_service.storage.s3 import S3, ObjectInfo, StorageError
from recon_service.storage.uri import S3Location


class PhotosRefused(ValueError):
    """The photos at an S3 location cannot be used; the message names the bucket, key and problem."""


def image_kind(head: bytes) -> str | None:
    """``jpeg``, ``png`` or ``heic`` from a file's first bytes, else ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"):
        return "heic"
    return None


def check_photos(s3: S3, location: S3Location, *, max_bytes: int, check_content: bool = False) -> list[ObjectInfo]:
    """The photo objects directly under ``location``; :class:`PhotosRefused` or :class:`StorageError` otherwise.

    ``check_content`` also reads each object's first bytes (a pre-signed upload can hold anything).
    """
    s3.check_bucket(location.bucket)
    photos = [o for o in s3.list(location) if is_photo_name(o.name)]
    if not photos:
        raise PhotosRefused(f"{location.uri}/ holds no photos ({PHOTO_KINDS} objects directly under the prefix)")
    for photo in photos:
        if photo.size > max_bytes:
            raise PhotosRefused(f"s3://{location.bucket}/{photo.key} is {photo.size:,} bytes, more than the limit of {max_bytes:,} bytes per photo")
        if photo.size == 0:
            raise PhotosRefused(f"s3://{location.bucket}/{photo.key} is empty (0 bytes); upload it again")
        if check_content and image_kind(s3.read_start(location.bucket, photo.key)) is None:
            raise PhotosRefused(f"s3://{location.bucket}/{photo.key} is not a JPEG, PNG or HEIC image; upload the photo itself")
    return photos


def download_photos(s3: S3, location: S3Location, target: Path, *, max_bytes: int) -> Path:
    """Copy the photos of ``location`` into the local folder ``target`` (made fresh); returns it."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        photos = check_photos(s3, location, max_bytes=max_bytes)
    except PhotosRefused as exc:
        raise StorageError(str(exc)) from None
    for photo in photos:
        s3.download(location.bucket, photo.key, target / photo.name)
    return target
