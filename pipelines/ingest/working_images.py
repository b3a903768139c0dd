"""Ingest: find, read, orient, check and downscale the photos (stage 1).

``list_photos`` is cheap (no decoding) so the service can count photos when a job is submitted.
``run`` turns a folder of user photos (JPEG, PNG, HEIC) into upright 8-bit RGB working JPEGs of a
bounded size, one per usable photo, plus what EXIF says about each (focal length prior, device, GPS).
Photos that cannot be used are skipped with a reason naming the file; the stage fails only when too
few usable photos remain. COLMAP ignores EXIF orientation, so the orientation is applied here and the
working images carry no EXIF at all.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipelines.errors import InvalidInput
from pipelines.options import IngestOptions
from pipelines.progress import CancelToken, StageProgress

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

logger = logging.getLogger(__name__)

PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".heic", ".heif"})

JPEG_QUALITY = 95
"""Quality of the working JPEGs: high enough that SIFT sees no block artefacts."""

DUPLICATE_MAX_BITS = 10
"""Near-duplicate threshold: differing bits (of 256) between two photos' difference hashes.
Neighbouring views of an object 10 degrees apart differ by far more; recompressed, rescaled or
slightly re-exposed copies of one photo by less."""

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


@dataclass(frozen=True)
class IngestedPhoto:
    """One usable photo: its working image and what its EXIF told us."""

    name: str
    """File name of the working image inside ``IngestResult.images_dir`` (e.g. ``IMG_0001.jpg``);
    the name COLMAP and every later stage use."""
    source: str
    """File name of the photo in the input folder."""
    width: int
    """Working image width, px (upright, downscaled)."""
    height: int
    """Working image height, px."""
    original_width: int
    """Source photo width after applying its orientation, px."""
    original_height: int
    orientation: int
    """EXIF orientation of the source (1..8; 1 when absent); already applied to the working image."""
    focal_px: float | None
    """Focal length prior in pixels of the working image, from EXIF; ``None`` when absent or implausible."""
    make: str | None
    model: str | None
    gps: tuple[float, float, float] | None
    """(latitude deg, longitude deg, altitude m, WGS84) from EXIF, altitude 0 when not recorded."""


class SkippedPhoto(NamedTuple):
    """A photo that was not used, and why (the reason is shown to the user)."""

    source: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """The working images of a run; ``photos`` lists them in input-name order."""

    images_dir: Path
    photos: list[IngestedPhoto]
    skipped: list[SkippedPhoto]
    found: int
    """Photo files found in the input folder (used + skipped)."""

    def summary(self) -> dict[str, Any]:
        devices = sorted({" ".join(filter(None, (p.make, p.model))) for p in self.photos} - {""})
        return {
            "photos_found": self.found,
            "photos_used": len(self.photos),
            "photos_skipped": len(self.skipped),
            "skipped": [{"photo": s.source, "reason": s.reason} for s in self.skipped],
            "max_working_side_px": max((max(p.width, p.height) for p in self.photos), default=0),
            "photos_with_focal_prior": sum(p.focal_px is not None for p in self.photos),
            "photos_with_gps": sum(p.gps is not None for p in self.photos),
            "devices": devices,
        }


class _Skip(Exception):
    """Internal: this photo cannot be used, for the given reason."""


def run(
    photos_dir: Path,
    images_dir: Path,
    options: IngestOptions,
    progress: StageProgress,
    cancel: CancelToken,
) -> IngestResult:
    """Read every photo in ``photos_dir`` and write the usable ones as working JPEGs into ``images_dir``.

    ``images_dir`` is replaced as a whole (built under a temporary name, then renamed). Raises
    :class:`InvalidInput` when the folder holds more than ``options.max_photos`` photos or fewer
    than ``options.min_photos`` usable ones; the message lists what was skipped and why.
    """
    from PIL import Image

    _register_heif()
    photos_dir = Path(photos_dir)
    images_dir = Path(images_dir)
    if not photos_dir.is_dir():
        raise InvalidInput(f"photos folder {str(photos_dir)!r} does not exist or is not a folder")
    sources = list_photos(photos_dir)
    if not sources:
        exts = ", ".join(sorted(PHOTO_EXTENSIONS))
        raise InvalidInput(f"no photos found in {str(photos_dir)!r}: add {exts} files")
    if len(sources) > options.max_photos:
        raise InvalidInput(
            f"{len(sources)} photos is more than the limit of {options.max_photos} (ingest.max_photos): "
            "send fewer photos or raise the limit"
        )

    partial = images_dir.with_name(images_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    photos: list[IngestedPhoto] = []
    skipped: list[SkippedPhoto] = []
    used_names: set[str] = set()
    digests: dict[str, str] = {}  # sha256 of file bytes -> working name, for exact duplicates
    hashes: list[tuple[str, np.ndarray]] = []  # (working name, difference hash bits)

    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = options.max_pixels  # PIL refuses > 2x this itself; we skip > 1x first
    try:
        for i, path in enumerate(sources):
            cancel.check()
            progress(i / len(sources), f"reading {path.name} ({i + 1}/{len(sources)})")
            try:
                photo, bits = _ingest_one(path, partial, options, used_names, digests, hashes)
            except _Skip as skip:
                logger.info("skipping %s: %s", path.name, skip)
                skipped.append(SkippedPhoto(path.name, str(skip)))
                continue
            photos.append(photo)
            used_names.add(photo.name.lower())
            hashes.append((photo.name, bits))
    except BaseException:  # cancelled or failed: leave no half-written images behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit

    if len(photos) < options.min_photos:
        shutil.rmtree(partial, ignore_errors=True)
        why = "; ".join(f"{s.source}: {s.reason}" for s in skipped)
        raise InvalidInput(
            f"only {len(photos)} usable photo{'s' if len(photos) != 1 else ''} "
            f"(need at least {options.min_photos})" + (f": {why}" if why else "")
        )
    shutil.rmtree(images_dir, ignore_errors=True)
    os.replace(partial, images_dir)
    progress(1.0, f"{len(photos)} photos ready, {len(skipped)} skipped")
    return IngestResult(images_dir=images_dir, photos=photos, skipped=skipped, found=len(sources))


def _register_heif() -> None:
    """Let PIL open HEIC/HEIF (iPhone photos). Idempotent."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _ingest_one(
    path: Path,
    out_dir: Path,
    options: IngestOptions,
    used_names: set[str],
    digests: dict[str, str],
    hashes: list[tuple[str, np.ndarray]],
) -> tuple[IngestedPhoto, np.ndarray]:
    """Check, decode, orient, downscale and write one photo; raise :class:`_Skip` with the reason."""
    from PIL import Image

    try:
        if path.stat().st_size == 0:
            raise _Skip("empty file (0 bytes)")
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:  # unreadable (permissions), vanished, or an I/O error: skip this photo alone
        raise _Skip(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if digest in digests:
        raise _Skip(f"exact duplicate of {digests[digest]}")

    with warnings.catch_warnings():
        # Between 1x and 2x MAX_IMAGE_PIXELS PIL only warns; the check below skips those with their size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            declared = re.search(r"\((\d+) pixels\)", str(exc))  # PIL's message states the declared size
            size = f"{int(declared.group(1)):,}" if declared else "too many"
            raise _Skip(f"too large: declares {size} pixels, more than {options.max_pixels:,} (ingest.max_pixels)") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on non-images; all mean "skip"
            raise _Skip("not a readable image (JPEG, PNG or HEIC expected)") from exc
    with img:
        stored_w, stored_h = img.size
        if stored_w * stored_h > options.max_pixels:
            raise _Skip(
                f"too large: {stored_w}x{stored_h} is {stored_w * stored_h:,} pixels, more than "
                f"{options.max_pixels:,} (ingest.max_pixels)"
            )
        meta = _read_metadata(img, path.name)
        transpose = meta["transpose"]  # what is left to apply: HEIF decoding applies its own rotation
        up_w, up_h = (stored_h, stored_w) if transpose >= 5 else (stored_w, stored_h)
        if min(up_w, up_h) < options.min_side:
            raise _Skip(f"too small: {up_w}x{up_h} px, the shorter side must be at least {options.min_side} px (ingest.min_side)")

        scale = min(1.0, options.max_image_size / max(stored_w, stored_h))
        work_w, work_h = max(1, round(up_w * scale)), max(1, round(up_h * scale))
        try:
            if img.format == "JPEG" and scale < 1.0:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target size): much faster.
                img.draft("RGB", (math.ceil(stored_w * scale), math.ceil(stored_h * scale)))
            img.load()
            rgb = _to_rgb8(img)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ...
            raise _Skip(f"corrupt or truncated image ({exc})") from exc

    rgb = _apply_orientation(rgb, transpose)
    if rgb.size != (work_w, work_h):
        rgb = rgb.resize((work_w, work_h), Image.Resampling.LANCZOS)

    bits = _difference_hash(rgb)
    for other, other_bits in hashes:
        if int((bits != other_bits).sum()) <= DUPLICATE_MAX_BITS:
            raise _Skip(f"near duplicate of {other}")

    name = _working_name(path, used_names)
    tmp = out_dir / f".{name}.tmp"
    rgb.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, out_dir / name)
    digests[digest] = name

    focal_px = _focal_prior_px(meta, stored_w, stored_h, max(work_w, work_h) / max(up_w, up_h), path.name)
    photo = IngestedPhoto(
        name=name,
        source=path.name,
        width=work_w,
        height=work_h,
        original_width=up_w,
        original_height=up_h,
        orientation=meta["orientation"],
        focal_px=focal_px,
        make=meta["make"],
        model=meta["model"],
        gps=meta["gps"],
    )
    return photo, bits


def _working_name(path: Path, used_lower: set[str]) -> str:
    """A stable JPEG name from the source stem; ``a.jpg`` + ``a.png`` become ``a.jpg`` + ``a_png.jpg``."""
    stem = re.sub(r"[^\w.-]", "_", path.stem, flags=re.ASCII).strip(".") or "photo"
    candidates = [f"{stem}.jpg", f"{stem}_{path.suffix.lstrip('.').lower()}.jpg"]
    candidates += [f"{stem}_{n}.jpg" for n in range(2, 10_000)]
    return next(c for c in candidates if c.lower() not in used_lower)


def _to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16/32-bit grey is rescaled (PIL's convert would clip), alpha is
    composited on white, CMYK / palette / grey are converted."""
    import numpy as np
    from PIL import Image

    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """Rotate/flip pixels so the image is upright, as EXIF orientation ``orientation`` asks."""
    from PIL import Image

    transpose = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(transpose) if transpose is not None else img


def _difference_hash(img: Image.Image, size: int = 16) -> np.ndarray:
    """256 bits: whether each pixel of a 17x16 grey thumbnail is brighter than its right neighbour."""
    import numpy as np
    from PIL import Image

    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    return (small[:, 1:] > small[:, :-1]).ravel()


def _read_metadata(img: Image.Image, name: str) -> dict[str, Any]:
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


def _focal_prior_px(meta: dict[str, Any], stored_w: int, stored_h: int, scale: float, name: str) -> float | None:
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
