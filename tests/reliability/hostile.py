"""Broken, hostile and unusual photo files, written byte for byte (what a phone, an editor or an attacker may upload)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from recon_service.kit import write_jpegs


def noise_image(seed: str, size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Image.Image:
    """A seeded gradient-plus-noise picture: distinct per seed, so no two count as near duplicates."""
    rng = random.Random(seed)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    return Image.blend(gradient, noise, 0.5).convert(mode)


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut after its headers and the first third of its scan data."""
    buffer = io.BytesIO()
    noise_image(path.name).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 3])
    return path


def text_named_jpg(path: Path) -> Path:
    path.write_text("This is not a photo.\r\nX-Injected: yes\r\n")
    return path


def png_bomb(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A 1 kB PNG whose header declares ``width`` x ``height`` RGB pixels (7.5 GB decoded at 50000²)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 4096, 9)  # the start of an all-black first row; decoding would go on for ever
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG (print workflows, some editors export these)."""
    noise_image(path.name, mode="CMYK").save(path, format="JPEG", quality=90)
    return path


def gray16_png(path: Path) -> Path:
    """A 16-bit greyscale PNG (scientific cameras, raw converters)."""
    img = noise_image(path.name).convert("L").point(lambda v: v * 257, mode="I")
    img.convert("I;16").save(path, format="PNG")
    return path


def garbage_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF is well-formed but says nonsense: orientation 99, focal 0/0, control characters, bad GPS."""
    exif = Image.Exif()
    exif[0x0112] = 99  # Orientation: valid values are 1..8
    exif[0x010F] = "Evil\r\nMake\x00\x07"  # Make with CR/LF, NUL and BEL
    exif[0x0110] = "M" * 5000  # Model: absurdly long
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x920A] = IFDRational(0, 0)  # FocalLength 0/0
    exif_ifd[0xA405] = 65535  # FocalLengthIn35mmFilm: 65535 mm
    gps = exif.get_ifd(0x8825)
    gps[2] = (IFDRational(999, 1), IFDRational(0, 0), IFDRational(61, 1))  # latitude 999 degrees, 0/0 minutes, 61 seconds
    gps[1] = "Q"
    noise_image(path.name).save(path, format="JPEG", quality=90, exif=exif.tobytes())
    return path


def random_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF segment is random bytes after a plausible TIFF header."""
    rng = random.Random(path.name)
    payload = b"MM\x00\x2a\x00\x00\x00\x08" + rng.randbytes(2000)
    noise_image(path.name).save(path, format="JPEG", quality=90, exif=b"Exif\x00\x00" + payload)
    return path


def scene_image(seed: str, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture: overlapping coloured shapes on a gradient, softened (structure survives recompression)."""
    from PIL import ImageDraw, ImageFilter

    rng = random.Random(seed)
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    width, height = size
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randrange(20, width // 2), y0 + rng.randrange(20, height // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.5))


def duplicates(folder: Path, original: str = "orig.jpg") -> tuple[Path, Path, Path]:
    """``orig.jpg``, an exact byte copy of it, and a near duplicate (downscaled to 90 % and recompressed)."""
    img = scene_image(original)
    first = folder / original
    img.save(first, format="JPEG", quality=92)
    copy = folder / "orig_copy.jpg"
    copy.write_bytes(first.read_bytes())
    again = folder / "orig_recompressed.jpg"
    img.resize((288, 216), Image.Resampling.LANCZOS).save(again, format="JPEG", quality=70)
    return first, copy, again


def valid_photos(folder: Path, count: int, size: tuple[int, int] = (320, 240)) -> Path:
    """``count`` ordinary, distinct JPEGs (``photo_1.jpg`` ...), generated whatever fixtures exist."""
    return write_jpegs(folder, count, size=size)
