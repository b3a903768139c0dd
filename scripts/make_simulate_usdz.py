"""Regenerate pipelines/assets/simulate_box.usdc, the simulate double's USDZ layer: a 1 m cube showing ./texture.jpg (needs usd-core).

Run from the repository root: `.venv/bin/python scripts/make_simulate_usdz.py`.
"""
import zipfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from pipelines.export.lod import Level
from pipelines.export.usdz import write_usdz
from pipelines.simulate import _textured_box

box = _textured_box(Image.new("RGB", (64, 64), (128, 128, 128)))
v, f, uv = np.asarray(box.vertices), np.asarray(box.faces), np.asarray(box.visual.uv)
n = trimesh.Trimesh(v, f, process=False).vertex_normals
level = Level(v, f, n, np.full((len(v), 3), 0.5), uv, np.full((64, 64, 3), 128, np.uint8))
write_usdz(Path("/tmp/simulate_box.usdz"), level)
with zipfile.ZipFile("/tmp/simulate_box.usdz") as z:
    assert z.namelist() == ["model.usdc", "texture.jpg"], z.namelist()
    Path("pipelines/assets/simulate_box.usdc").write_bytes(z.read("model.usdc"))
