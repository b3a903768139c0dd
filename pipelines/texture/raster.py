"""Rasterising a UV atlas: which face, at which barycentrics, covers each texel centre (Open3D ray casting)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.texture.atlas import Atlas


def atlas_raycaster(atlas: Atlas) -> Any:
    """A ray-casting scene of the flat atlas (z = 0, texel units): rasterization by ray casting."""
    import open3d as o3d

    flat = np.concatenate([atlas.texel_xy, np.zeros((len(atlas.texel_xy), 1))], axis=1)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(flat.astype(np.float32)), o3d.core.Tensor(atlas.faces.astype(np.uint32)))
    return scene


def rasterize(scene: Any, size: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels in [start, stop) (row-major indices) whose centres lie on a face: index, face, barycentrics (N, 3)."""
    import open3d as o3d

    index = np.arange(start, stop, dtype=np.int64)
    rays = np.zeros((len(index), 6), dtype=np.float32)
    rays[:, 0] = index % size + 0.5
    rays[:, 1] = index // size + 0.5
    rays[:, 2] = 1.0
    rays[:, 5] = -1.0
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    face = hit["primitive_ids"].numpy().astype(np.int64)
    ok = face != o3d.t.geometry.RaycastingScene.INVALID_ID
    uv = hit["primitive_uvs"].numpy()[ok]
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1).astype(np.float32)
    return index[ok], face[ok], bary
