"""Stage ``ingest``: read, orient, check and downscale the photos into working images.

``run`` turns a folder of user photos (JPEG, PNG, HEIC) into upright 8-bit RGB working JPEGs of a
bounded size, one per usable photo, plus what EXIF says about each (focal length prior, device, GPS;
:mod:`pipelines.ingest.exif`). Each photo is opened once, without following links, and decoded from
the bytes read through that descriptor (:class:`pipelines.photos.PhotoFolder`). Photos that cannot
be used are skipped with a reason naming the file; the stage fails when too few usable photos
remain, or when a photo-named entry is not a regular file (the folder was changed after the job
was submitted). COLMAP ignores EXIF orientation, so the orientation is applied here and the
working images carry no EXIF at all.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipelines.errors import InvalidInput
from pipelines.files import atomic_dir, atomic_path
from pipelines.ingest.exif import focal_prior_px, read_metadata
from pipelines.options import IngestOptions
from pipelines.photos import PHOTO_KINDS, PhotoData, PhotoFolder, PhotoRefused
from pipelines.progress import CancelToken, StageProgress

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
"""Quality of the working JPEGs: high enough that SIFT sees no block artefacts."""

DUPLICATE_MAX_BITS = 10
"""Near-duplicate threshold: differing bits (of 256) between two photos' difference hashes.
Neighbouring views of an object 10 degrees apart differ by far more; recompressed, rescaled or
slightly re-exposed copies of one photo by less."""


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
    :class:`InvalidInput` when the folder holds more than ``options.max_photos`` photos, fewer than
    ``options.min_photos`` usable ones (the message lists what was skipped and why), or an entry
    named like a photo that is not a regular file.
    """
    from PIL import Image

    register_heif()
    photos_dir = Path(photos_dir)
    with PhotoFolder.open_photos(photos_dir, max_bytes=options.max_photo_bytes) as folder:
        sources = folder.names()
        if not sources:
            raise InvalidInput(f"no photos found in {str(photos_dir)!r}: add {PHOTO_KINDS} files")
        if len(sources) > options.max_photos:
            raise InvalidInput(
                f"{len(sources)} photos is more than the limit of {options.max_photos} (ingest.max_photos): "
                "send fewer photos or raise the limit"
            )
        photos: list[IngestedPhoto] = []
        skipped: list[SkippedPhoto] = []
        used_names: set[str] = set()
        digests: dict[str, str] = {}  # sha256 of file bytes -> working name, for exact duplicates
        hashes: list[tuple[str, np.ndarray]] = []  # (working name, difference hash bits)

        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = options.max_pixels  # PIL refuses > 2x this itself; we skip > 1x first
        try:
            with atomic_dir(images_dir) as partial:
                for i, name in enumerate(sources):
                    cancel.check()
                    progress(i / len(sources), f"reading {name} ({i + 1}/{len(sources)})")
                    try:
                        photo, bits = _ingest_one(_read(folder, name), partial, options, used_names, digests, hashes)
                    except _Skip as skip:
                        logger.info("skipping %s: %s", name, skip)
                        skipped.append(SkippedPhoto(name, str(skip)))
                        continue
                    photos.append(photo)
                    used_names.add(photo.name.lower())
                    hashes.append((photo.name, bits))
                if len(photos) < options.min_photos:
                    why = "; ".join(f"{s.source}: {s.reason}" for s in skipped)
                    raise InvalidInput(
                        f"only {len(photos)} usable photo{'s' if len(photos) != 1 else ''} "
                        f"(need at least {options.min_photos})" + (f": {why}" if why else "")
                    )
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    progress(1.0, f"{len(photos)} photos ready, {len(skipped)} skipped")
    return IngestResult(images_dir=Path(images_dir), photos=photos, skipped=skipped, found=len(sources))


def _read(folder: PhotoFolder, name: str) -> PhotoData:
    """The photo's bytes; a special file fails the run, an unreadable or oversized one is skipped."""
    try:
        return folder.read(name)
    except PhotoRefused as exc:
        if exc.special:
            raise InvalidInput(f"photos_dir changed after submission: {exc}") from None
        raise _Skip(exc.problem.removeprefix("is ")) from None
    except FileNotFoundError:
        raise _Skip("was removed from the folder before it could be read") from None
    except OSError as exc:  # unreadable (permissions) or an I/O error: skip this photo alone
        raise _Skip(f"cannot be read ({exc.strerror or type(exc).__name__})") from None


def register_heif() -> None:
    """Let PIL open HEIC/HEIF (iPhone photos). Idempotent."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _ingest_one(
    source: PhotoData,
    out_dir: Path,
    options: IngestOptions,
    used_names: set[str],
    digests: dict[str, str],
    hashes: list[tuple[str, np.ndarray]],
) -> tuple[IngestedPhoto, np.ndarray]:
    """Check, decode, orient, downscale and write one photo; raise :class:`_Skip` with the reason."""
    from PIL import Image

    if not source.data:
        raise _Skip("empty file (0 bytes)")
    digest = hashlib.sha256(source.data).hexdigest()
    if digest in digests:
        raise _Skip(f"exact duplicate of {digests[digest]}")

    with warnings.catch_warnings():
        # Between 1x and 2x MAX_IMAGE_PIXELS PIL only warns; the check below skips those with their size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(source.data))
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
        meta = read_metadata(img, source.name)
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

    name = _working_name(Path(source.name), used_names)
    with atomic_path(out_dir / name) as tmp:
        rgb.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    digests[digest] = name

    focal_px = focal_prior_px(meta, stored_w, stored_h, max(work_w, work_h) / max(up_w, up_h), source.name)
    photo = IngestedPhoto(
        name=name,
        source=source.name,
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
