"""Fixtures shared by every test area."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES_READY = Path("/tmp/fixtures_ready")


def write_photos(folder: Path, count: int, *, size: tuple[int, int] = (320, 240)) -> Path:
    """``count`` real, decodable photos in ``folder`` (``photo_1.jpg`` ...), as the backend stores them.

    Rendered fixture photos are copied when the fixture renderer has produced them; otherwise
    small JPEGs are generated (seeded noise, so each photo differs).
    """
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rendered: list[Path] = []
    if FIXTURES_READY.exists():
        from fixtures.scenes import scene_dir

        images = scene_dir("tabletop_small") / "images"
        rendered = sorted(images.glob("*.jpg")) if images.is_dir() else []
    rng = np.random.default_rng(count)
    for i in range(count):
        target = folder / f"photo_{i + 1}.jpg"
        if i < len(rendered):
            shutil.copyfile(rendered[i], target)
        else:
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(target, quality=85)
    return folder


@pytest.fixture
def make_photos(tmp_path: Path) -> Callable[..., Path]:
    """``make_photos(count, name=...)`` → a folder of ``count`` photos under ``tmp_path/uploads``."""

    def make(count: int, name: str = "job", **kwargs: object) -> Path:
        return write_photos(tmp_path / "uploads" / name, count, **kwargs)  # type: ignore[arg-type]

    return make
