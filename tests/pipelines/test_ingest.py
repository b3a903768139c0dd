"""Ingest stage: every way a photo can be unusable gives its own reason; usable ones come out upright.

Photos are made in each test with PIL (smooth random textures, so near-duplicate detection sees
distinct images), with EXIF written through ``PIL.Image.Exif``.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import ingest
from pipelines.errors import Cancelled, InvalidInput
from pipelines.options import IngestOptions
from pipelines.progress import CancelToken, no_progress

OPTIONS = IngestOptions(max_image_size=640, min_side=160)


def texture(width: int, height: int, seed: int) -> np.ndarray:
    """A distinct smooth colour texture (blurred noise), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def save(path: Path, pixels: np.ndarray, exif: Image.Exif | None = None, **kwargs: object) -> Path:
    img = Image.fromarray(pixels)
    if exif is not None:
        kwargs["exif"] = exif.tobytes()
    img.save(path, **kwargs)
    return path


def add_good_photos(folder: Path, count: int = 3, size: tuple[int, int] = (400, 300)) -> None:
    for i in range(count):
        save(folder / f"good_{i}.jpg", texture(*size, seed=1000 + i))


def run_ingest(photos: Path, tmp_path: Path, options: IngestOptions = OPTIONS) -> ingest.IngestResult:
    return ingest.run(photos, tmp_path / "work" / "images", options, no_progress, CancelToken())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    return folder


def skip_reason(result: ingest.IngestResult, source: str) -> str:
    reasons = {s.source: s.reason for s in result.skipped}
    assert source in reasons, f"{source} was not skipped; skipped: {reasons}"
    return reasons[source]


def test_good_photos_become_working_jpegs_with_stable_names(photos: Path, tmp_path: Path) -> None:
    save(photos / "IMG_0001.jpg", texture(1600, 1200, seed=1))
    save(photos / "IMG_0002.png", texture(800, 600, seed=2))
    save(photos / "IMG 0003.jpeg", texture(400, 300, seed=3))

    result = run_ingest(photos, tmp_path)

    by_source = {p.source: p for p in result.photos}
    assert {s: p.name for s, p in by_source.items()} == {
        "IMG_0001.jpg": "IMG_0001.jpg",
        "IMG_0002.png": "IMG_0002.jpg",
        "IMG 0003.jpeg": "IMG_0003.jpg",  # characters other than letters, digits, . _ - become _
    }
    assert result.skipped == []
    big = by_source["IMG_0001.jpg"]
    assert (big.width, big.height, big.original_width, big.original_height) == (640, 480, 1600, 1200)
    small = by_source["IMG 0003.jpeg"]
    assert (small.width, small.height) == (400, 300)  # never upscaled
    for p in result.photos:
        with Image.open(result.images_dir / p.name) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (p.width, p.height))
    assert sorted(f.name for f in result.images_dir.iterdir()) == sorted(p.name for p in result.photos)
    assert result.summary()["photos_used"] == 3


def test_name_collision_between_jpg_and_png_keeps_both(photos: Path, tmp_path: Path) -> None:
    save(photos / "a.jpg", texture(400, 300, seed=1))
    save(photos / "a.png", texture(400, 300, seed=2))
    save(photos / "b.jpg", texture(400, 300, seed=3))

    result = run_ingest(photos, tmp_path)

    assert {p.source: p.name for p in result.photos} == {"a.jpg": "a.jpg", "a.png": "a_png.jpg", "b.jpg": "b.jpg"}


def test_zero_byte_file_is_skipped_as_empty(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    (photos / "empty.jpg").write_bytes(b"")
    assert skip_reason(run_ingest(photos, tmp_path), "empty.jpg") == "empty file (0 bytes)"


def test_text_file_named_jpg_is_skipped_as_not_an_image(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    (photos / "notes.jpg").write_text("shopping list: eggs, milk\n")
    assert "not a readable image" in skip_reason(run_ingest(photos, tmp_path), "notes.jpg")


def test_truncated_jpeg_is_skipped_as_corrupt(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    whole = save(photos / "whole.jpg", texture(800, 600, seed=7)).read_bytes()
    (photos / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    (photos / "whole.jpg").unlink()

    assert "corrupt or truncated" in skip_reason(run_ingest(photos, tmp_path), "cut.jpg")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb_png_is_skipped_before_decoding(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)  # 50000x50000 RGB, 7.5 GB decoded
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    (photos / "bomb.png").write_bytes(bomb + _png_chunk(b"IEND", b""))

    guard_before = Image.MAX_IMAGE_PIXELS

    reason = skip_reason(run_ingest(photos, tmp_path), "bomb.png")

    assert reason.startswith("too large: declares 2,500,000,000 pixels") and "ingest.max_pixels" in reason
    assert Image.MAX_IMAGE_PIXELS == guard_before  # PIL's process-wide guard is restored


def test_photo_over_max_pixels_is_skipped_by_declared_size(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    save(photos / "big.png", texture(1500, 1000, seed=9))

    result = run_ingest(photos, tmp_path, IngestOptions(max_image_size=640, max_pixels=1_000_000))

    assert skip_reason(result, "big.png").startswith("too large: 1500x1000 is 1,500,000 pixels")


def test_tiny_photo_is_skipped_as_too_small(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    save(photos / "thumb.jpg", texture(120, 90, seed=4))
    reason = skip_reason(run_ingest(photos, tmp_path), "thumb.jpg")
    assert reason == "too small: 120x90 px, the shorter side must be at least 160 px (ingest.min_side)"


def test_exact_and_near_duplicates_are_skipped_naming_the_kept_photo(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    pixels = texture(800, 600, seed=5)
    save(photos / "orig.jpg", pixels, quality=92)
    (photos / "orig_copy.jpg").write_bytes((photos / "orig.jpg").read_bytes())
    save(photos / "orig_recompressed.png", pixels)  # same picture, other format and no JPEG loss
    brighter = np.clip(pixels.astype(np.int16) + 6, 0, 255).astype(np.uint8)
    save(photos / "orig_brighter.jpg", brighter, quality=80)

    result = run_ingest(photos, tmp_path)

    assert skip_reason(result, "orig_copy.jpg") == "exact duplicate of orig.jpg"
    assert skip_reason(result, "orig_recompressed.png") == "near duplicate of orig.jpg"
    assert skip_reason(result, "orig_brighter.jpg") == "near duplicate of orig.jpg"
    assert {p.source for p in result.photos} == {"good_0.jpg", "good_1.jpg", "good_2.jpg", "orig.jpg"}


def test_neighbouring_views_are_not_near_duplicates(photos: Path, tmp_path: Path) -> None:
    """A camera panning by ~5% of the frame gives a new view, not a duplicate."""
    scene = texture(1000, 400, seed=11)
    for i in range(4):
        save(photos / f"pan_{i}.jpg", scene[:, i * 40 : i * 40 + 500])

    result = run_ingest(photos, tmp_path)

    assert result.skipped == [] and len(result.photos) == 4


def test_cmyk_16bit_palette_and_grey_photos_become_8bit_rgb(photos: Path, tmp_path: Path) -> None:
    Image.fromarray(texture(400, 300, seed=21)).convert("CMYK").save(photos / "cmyk.jpg")
    ramp = (np.linspace(0, 65535, 400 * 300).reshape(300, 400)).astype(np.uint16)
    Image.fromarray(ramp).save(photos / "grey16.png")
    Image.fromarray(texture(400, 300, seed=22)).convert("P", palette=Image.Palette.ADAPTIVE).save(photos / "palette.png")
    Image.fromarray(texture(400, 300, seed=23)).convert("L").save(photos / "grey8.jpg")

    result = run_ingest(photos, tmp_path)

    assert result.skipped == []
    for p in result.photos:
        with Image.open(result.images_dir / p.name) as img:
            assert img.mode == "RGB", p.source
    grey16 = np.asarray(Image.open(result.images_dir / "grey16.jpg").convert("L"), dtype=np.int16)
    # rescaled, not clipped: the 16-bit ramp spans the whole 8-bit range linearly
    assert grey16[0, :20].mean() < 8 and grey16[-1, -20:].mean() > 247
    assert abs(grey16[150, 200] - 128) < 8


def test_exif_orientation_6_is_applied_so_the_working_image_is_upright(photos: Path, tmp_path: Path) -> None:
    """Orientation 6: the stored pixels must be turned 90 degrees clockwise to display upright."""
    add_good_photos(photos)
    stored = np.zeros((300, 400, 3), np.uint8)  # landscape as stored by the sensor
    stored[:, :200] = (255, 0, 0)  # left half red, right half blue
    stored[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(photos / "portrait.jpg", stored, exif=exif, quality=95)

    result = run_ingest(photos, tmp_path)

    p = next(p for p in result.photos if p.source == "portrait.jpg")
    assert (p.width, p.height, p.orientation) == (300, 400, 6)
    upright = np.asarray(Image.open(result.images_dir / p.name), dtype=np.int16)
    # turned clockwise, the stored left (red) half is now on top and the right (blue) at the bottom
    assert upright[:150, :, 0].mean() > 200 and upright[:150, :, 2].mean() < 50
    assert upright[250:, :, 2].mean() > 200 and upright[250:, :, 0].mean() < 50
    with Image.open(result.images_dir / p.name) as img:
        assert img.getexif().get(0x0112) is None  # no orientation left for anyone to apply twice


def test_heic_photo_is_read_and_oriented(photos: Path, tmp_path: Path) -> None:
    ingest.register_heif()  # writing the HEIC fixture needs the plugin, whatever ran before this test
    add_good_photos(photos)
    stored = texture(400, 300, seed=31)
    stored[:40, :] = (255, 255, 255)  # white band along the stored top edge
    exif = Image.Exif()
    exif[0x0112] = 6
    save(photos / "IMG_0100.HEIC", stored, exif=exif, quality=90)

    result = run_ingest(photos, tmp_path)

    p = next(p for p in result.photos if p.source == "IMG_0100.HEIC")
    assert (p.name, p.width, p.height, p.orientation) == ("IMG_0100.jpg", 300, 400, 6)
    upright = np.asarray(Image.open(result.images_dir / p.name).convert("L"), dtype=np.int16)
    assert upright[:, -30:].mean() > 240  # the stored top edge is now the right edge, turned once only


def _exif_with_focal(focal_35mm: object = None, focal_mm: object = None, xres: object = None, unit: object = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Apple"
    exif[0x0110] = "iPhone 13"
    sub = exif.get_ifd(0x8769)
    for tag, value in ((0xA405, focal_35mm), (0x920A, focal_mm), (0xA20E, xres), (0xA210, unit)):
        if value is not None:
            sub[tag] = value
    return exif


def test_exif_focal_length_becomes_a_prior_in_working_pixels(photos: Path, tmp_path: Path) -> None:
    save(photos / "f35.jpg", texture(1200, 900, seed=41), exif=_exif_with_focal(focal_35mm=26))
    # 4.2 mm lens, sensor 1000 px per cm: 420 px at 1200 wide, then halved by the downscale to 640
    save(photos / "plane.jpg", texture(1200, 900, seed=42), exif=_exif_with_focal(focal_mm=4.2, xres=1000.0, unit=3))
    save(photos / "none.jpg", texture(1200, 900, seed=43))

    by_source = {p.source: p for p in run_ingest(photos, tmp_path).photos}

    expected_35 = 26 / math.hypot(36, 24) * math.hypot(1200, 900) * 640 / 1200
    assert by_source["f35.jpg"].focal_px == pytest.approx(expected_35, rel=1e-6)
    assert by_source["plane.jpg"].focal_px == pytest.approx(4.2 * 1000 / 10 * 640 / 1200, rel=1e-6)
    assert by_source["none.jpg"].focal_px is None
    assert (by_source["f35.jpg"].make, by_source["f35.jpg"].model) == ("Apple", "iPhone 13")


@pytest.mark.parametrize(
    "exif",
    [
        _exif_with_focal(focal_35mm=0),
        _exif_with_focal(focal_35mm=-5),
        _exif_with_focal(focal_35mm=100_000),
        _exif_with_focal(focal_mm=0.0, xres=1000.0, unit=3),
        _exif_with_focal(focal_mm=4.2, xres=1000.0, unit=1),  # "no unit"
        _exif_with_focal(focal_mm="garbage", xres=float("nan"), unit=99),
    ],
    ids=["zero", "negative", "absurd", "zero_mm", "no_unit", "garbage"],
)
def test_garbage_focal_exif_gives_no_prior(exif: Image.Exif, photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    save(photos / "odd.jpg", texture(400, 300, seed=51), exif=exif)
    photo = next(p for p in run_ingest(photos, tmp_path).photos if p.source == "odd.jpg")
    assert photo.focal_px is None


def test_corrupt_exif_block_never_crashes_ingest(photos: Path, tmp_path: Path) -> None:
    """A hand-made EXIF block: orientation as text, Exif and GPS IFD pointers past the end / to itself."""
    add_good_photos(photos)
    entries = [(0x0112, 2, 4, b"abc\x00"), (0x8769, 4, 1, struct.pack("<I", 0xFFFFFF00)), (0x8825, 4, 1, struct.pack("<I", 8))]
    ifd0 = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + b"\x00" * 4
    raw = save(photos / "odd.jpg", texture(400, 300, seed=52)).read_bytes()
    (photos / "odd.jpg").write_bytes(raw[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + raw[2:])

    photo = next(p for p in run_ingest(photos, tmp_path).photos if p.source == "odd.jpg")

    assert (photo.orientation, photo.focal_px, photo.gps, photo.width) == (1, None, None, 400)


def test_gps_exif_is_read_as_degrees(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos)
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 29.5), 3: "W", 4: (2.0, 17.0, 40.2), 6: 35.0})
    save(photos / "geo.jpg", texture(400, 300, seed=61), exif=exif)

    photo = next(p for p in run_ingest(photos, tmp_path).photos if p.source == "geo.jpg")

    assert photo.gps == pytest.approx((48 + 51 / 60 + 29.5 / 3600, -(2 + 17 / 60 + 40.2 / 3600), 35.0))


def test_too_few_usable_photos_names_every_skipped_file(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos, count=2)
    (photos / "a.jpg").write_text("not a photo")
    (photos / "b.jpg").write_bytes(b"")

    with pytest.raises(InvalidInput) as err:
        run_ingest(photos, tmp_path)

    assert str(err.value) == (
        "only 2 usable photos (need at least 3): a.jpg: not a readable image (JPEG, PNG or HEIC expected); "
        "b.jpg: empty file (0 bytes)"
    )
    assert not (tmp_path / "work" / "images").exists()


def test_more_photos_than_the_limit_is_invalid_input(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos, count=4)
    with pytest.raises(InvalidInput, match=r"4 photos is more than the limit of 3 \(ingest.max_photos\)"):
        run_ingest(photos, tmp_path, IngestOptions(max_photos=3))


def test_empty_folder_is_invalid_input(photos: Path, tmp_path: Path) -> None:
    (photos / "readme.txt").write_text("no photos here")
    with pytest.raises(InvalidInput, match="no photos found"):
        run_ingest(photos, tmp_path)


def test_progress_is_reported_per_photo_and_increases(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos, count=4)
    seen: list[float] = []
    ingest.run(photos, tmp_path / "images", OPTIONS, lambda f, m: seen.append(f), CancelToken())
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] == 1.0


def test_cancel_stops_ingest_between_photos(photos: Path, tmp_path: Path) -> None:
    add_good_photos(photos, count=4)
    cancel = CancelToken()
    seen: list[str] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)
        if len(seen) == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        ingest.run(photos, tmp_path / "images", OPTIONS, progress, cancel)
    assert len(seen) == 2  # stopped before reading a third photo
    assert list(tmp_path.iterdir()) == [photos]  # neither the images folder nor its partial copy is left


def test_a_photo_that_is_a_symbolic_link_is_refused_not_followed(photos: Path, tmp_path: Path) -> None:
    """Even to a valid photo: a link could point anywhere (outside the upload area) by the time it is read."""
    add_good_photos(photos)
    outside = save(tmp_path / "secret.jpg", texture(400, 300, seed=77))
    (photos / "linked.jpg").symlink_to(outside)
    with pytest.raises(InvalidInput, match=r"changed after submission: linked.jpg is a symbolic link"):
        run_ingest(photos, tmp_path)
    assert not (tmp_path / "work" / "images").exists()


def test_a_fifo_named_like_a_photo_fails_the_run_at_once_without_blocking(photos: Path, tmp_path: Path) -> None:
    import os
    import threading

    add_good_photos(photos)
    os.mkfifo(photos / "pipe.jpg")
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(InvalidInput, run_ingest, photos, tmp_path).value))
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "ingest blocked on a FIFO"
    assert "pipe.jpg is a FIFO" in str(outcome[0])


def test_each_photo_is_decoded_from_the_bytes_that_were_checked(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is opened once; replacing it by a link after that open changes nothing about what is read."""
    from pipelines import photos as photo_module

    add_good_photos(photos, count=4)
    outside = save(tmp_path / "secret.jpg", texture(400, 300, seed=78))
    opened: list[str] = []
    real_read = photo_module.PhotoFolder.read

    def read_then_swap(self: photo_module.PhotoFolder, name: str) -> photo_module.PhotoData:
        data = real_read(self, name)
        opened.append(name)
        target = photos / name
        target.unlink()
        target.symlink_to(outside)  # an attacker swaps the file right after it was opened
        return data

    monkeypatch.setattr(photo_module.PhotoFolder, "read", read_then_swap)
    result = run_ingest(photos, tmp_path)
    assert sorted(opened) == sorted(p.name for p in photos.iterdir()) and len(opened) == 4  # once each
    for photo in result.photos:
        index = int(photo.source.removeprefix("good_").removesuffix(".jpg"))
        got = np.asarray(Image.open(result.images_dir / photo.name), dtype=np.float64)
        want = texture(400, 300, seed=1000 + index).astype(np.float64)
        assert np.abs(got - want).mean() < 8, f"{photo.source} was not decoded from the bytes first read"
