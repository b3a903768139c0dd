"""Valid test photos, as a backend stores uploads: ``photo_1.jpg``, ``photo_2.jpg``, ..."""

from __future__ import annotations

import random
from pathlib import Path


def write_jpegs(folder: Path, count: int, *, size: tuple[int, int] = (320, 240)) -> Path:
    """``count`` different, decodable JPEGs (seeded noise over a gradient) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    for i in range(count):
        rng = random.Random(f"{folder.name}/{i}")
        noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
        Image.blend(gradient, noise, 0.5).save(folder / f"photo_{i + 1}.jpg", quality=85)
    return folder
