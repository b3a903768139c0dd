"""What a photo's EXIF says that the pipeline uses: orientation, a focal-length prior, device, GPS.

Garbage EXIF is common (editing apps, broken writers) and must never make a photo unusable: every
reader returns ``None`` for an absent or implausible value instead of raising.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


# Sanity range of a focal length prior, as a multiple of the image's longest side. 0.25 is a
# ~127 degree field of view (wider than any phone's ultra-wide), 15 a ~4 degree telephoto.
_FOCAL_MIN_FACTOR = 0.25
_FOCAL_MAX_FACTOR = 15.0
_DIAGONAL_35MM = math.hypot(36.0, 24.0)  # mm; "35 mm equivalent" focal lengths refer to this diagonal
_MM_PER_RESOLUTION_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # EXIF FocalPlaneResolutionUnit

# EXIF tags (IFD0, Exif IFD, GPS IFD).
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
_IFD_EXIF, _IFD_GPS = 0x8769, 0x8825
_TAG_FOCAL_LENGTH, _TAG_FOCAL_35MM = 0x920A, 0xA405
_TAG_FOCAL_PLANE_XRES, _TAG_FOCAL_PLANE_UNIT = 0xA20E, 0xA210


def read_metadata(img: Image.Image, name: str) -> dict[str, Any]:
    """Orientation, focal-length tags, make/model and GPS from EXIF; absent or garbage values are None.

    Garbage EXIF is common (editing apps, broken writers) and must never make a photo unusable.
    """
    meta: dict[str, Any] = {"orientation": 1, "transpose": 1, "make": None, "model": None, "gps": None,
                            "focal_35mm": None, "focal_mm": None, "focal_plane_xres": None, "focal_plane_unit": None}
    try:
        exif = img.getexif()
        # pillow-heif applies HEIF's own rotation while decoding and resets the EXIF tag to 1,
        # keeping the original value here; record it but do not apply it twice.
        heif_orientation = _as_int(img.info.get("original_orientation"))
        orientation = _as_int(exif.get(_TAG_ORIENTATION)) if heif_orientation is None else heif_orientation
        if orientation is not None and 1 <= orientation <= 8:
            meta["orientation"] = orientation
            meta["transpose"] = orientation if heif_orientation is None else 1
        meta["make"] = _as_text(exif.get(_TAG_MAKE))
        meta["model"] = _as_text(exif.get(_TAG_MODEL))
        sub = exif.get_ifd(_IFD_EXIF)
        meta["focal_35mm"] = _as_positive(sub.get(_TAG_FOCAL_35MM))
        meta["focal_mm"] = _as_positive(sub.get(_TAG_FOCAL_LENGTH))
        meta["focal_plane_xres"] = _as_positive(sub.get(_TAG_FOCAL_PLANE_XRES))
        meta["focal_plane_unit"] = _as_int(sub.get(_TAG_FOCAL_PLANE_UNIT))
        meta["gps"] = _gps(exif.get_ifd(_IFD_GPS))
    except Exception as exc:  # noqa: BLE001 - any EXIF parse failure means "no metadata", never a crash
        logger.warning("%s: unreadable EXIF ignored (%s: %s)", name, type(exc).__name__, exc)
    return meta


def focal_prior_px(meta: dict[str, Any], stored_w: int, stored_h: int, scale: float, name: str) -> float | None:
    """Focal length in working-image pixels from EXIF, or None when absent or implausible.

    ``scale`` is working size / original size. A 35 mm-equivalent focal length maps the 43.3 mm
    diagonal of a 36x24 mm frame onto the image diagonal; FocalLength with FocalPlaneXResolution
    gives pixels of the stored (unrotated) original directly.
    """
    focal = None
    if meta["focal_35mm"] is not None:
        focal = meta["focal_35mm"] / _DIAGONAL_35MM * math.hypot(stored_w, stored_h)
    elif meta["focal_mm"] is not None and meta["focal_plane_xres"] is not None:
        mm_per_unit = _MM_PER_RESOLUTION_UNIT.get(meta["focal_plane_unit"] or 2)
        if mm_per_unit is not None:
            focal = meta["focal_mm"] * meta["focal_plane_xres"] / mm_per_unit
    if focal is None:
        return None
    factor = focal / max(stored_w, stored_h)
    if not _FOCAL_MIN_FACTOR <= factor <= _FOCAL_MAX_FACTOR:
        logger.info("%s: EXIF focal length %.0f px (%.2f x the long side) is implausible, ignored", name, focal, factor)
        return None
    return focal * scale


def _gps(ifd: Any) -> tuple[float, float, float] | None:
    """(lat, lon, alt) in degrees/metres from a GPS IFD, or None when missing or out of range."""
    lat, lon = _dms(ifd.get(2)), _dms(ifd.get(4))
    if lat is None or lon is None:
        return None
    if _as_text(ifd.get(1)) == "S":
        lat = -lat
    if _as_text(ifd.get(3)) == "W":
        lon = -lon
    if abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return None
    alt = _as_positive(ifd.get(6)) or 0.0
    if _as_int(ifd.get(5)) == 1:
        alt = -alt
    return (lat, lon, alt)


def _dms(value: Any) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return None
    parts = [_as_float(v) for v in value]
    if any(p is None or p < 0 for p in parts):
        return None
    d, m, s = parts
    return d + m / 60.0 + s / 3600.0


def _as_float(value: Any) -> float | None:
    """A finite float from an EXIF number or rational (which may be 0/0), else None."""
    try:
        if isinstance(value, tuple) and len(value) == 2:
            value = value[0] / value[1]
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _as_positive(value: Any) -> float | None:
    number = _as_float(value)
    return number if number is not None and number > 0 else None


def _as_int(value: Any) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _as_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text[:64] or None
