"""The mobile level of detail: at most ``export.mobile_max_faces`` triangles and a ``mobile_texture_size``^2 texture.

Apple's guidance for AR assets is about 100 000 triangles and one 2048^2 texture set. The full
mesh (welded: its seams were split for the atlas) is simplified by quadric error, gets its own UV
atlas, and its texture is baked again *from the full model*: every texel of the new atlas takes
the colour of the closest point on the full textured surface. So the simplified surface looks
like the full one, colour for colour, rather than wearing the full atlas shrunk onto a mesh it
does not fit. A full level already within the budget is kept as it is (only its texture
downsampled when it is larger than the mobile size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.export.preview import sample_texture
from pipelines.geometry import vertex_normals
from pipelines.mesh.simplify import simplify
from pipelines.progress import CancelToken
from pipelines.texture.atlas import build_atlas
from pipelines.texture.blend import push_pull_fill
from pipelines.texture.raster import atlas_raycaster, rasterize

PADDING_TEXELS = 2
TEXELS_PER_CHUNK = 1 << 20


@dataclass
class Level:
    """One level of detail, model frame (metres, +Y up); vertices split along UV seams when textured."""

    vertices: np.ndarray
    """(V, 3) float64."""
    faces: np.ndarray
    """(F, 3) int64."""
    normals: np.ndarray
    """(V, 3) unit."""
    colours: np.ndarray
    """(V, 3) 0..1 vertex colours (what untextured viewers show)."""
    uv: np.ndarray | None = None
    """(V, 2) OpenGL convention (v up); ``None`` when not textured."""
    texture: np.ndarray | None = None
    """(S, S, 3) uint8 RGB; ``None`` when not textured."""
    simplified: bool = False
    """True when the faces were simplified (the texture then baked again)."""

    @property
    def texture_size(self) -> int:
        return 0 if self.texture is None else int(self.texture.shape[0])


def mobile_level(full: Level, max_faces: int, texture_size: int, cancel: CancelToken) -> Level:
    """The mobile level of ``full`` (the full level's own arrays when it is within both budgets)."""
    import cv2

    size = min(texture_size, full.texture_size) if full.texture is not None else 0
    if len(full.faces) <= max_faces:
        texture = full.texture
        if texture is not None and texture.shape[0] > size:  # same mesh and UVs: an exact downsample
            texture = cv2.resize(texture, (size, size), interpolation=cv2.INTER_AREA)
        return Level(full.vertices, full.faces, full.normals, full.colours, full.uv, texture, simplified=False)

    welded, corner = np.unique(full.vertices, axis=0, return_inverse=True)
    v, f = simplify(welded, corner.reshape(-1)[full.faces], max_faces, preserve_border=True)  # silhouettes keep their shape
    cancel.check()
    scene = _closest_point_scene(full)
    normals = vertex_normals(v, f)
    colours = _colours_at(scene, full, v)
    if full.texture is None or full.uv is None:
        return Level(v, f, normals, colours, simplified=True)

    atlas = build_atlas(v, f, size, PADDING_TEXELS)
    cancel.check()
    flat = atlas_raycaster(atlas)
    rgb = np.zeros((size * size, 3), dtype=np.uint8)
    known = np.zeros(size * size, dtype=bool)
    for start in range(0, size * size, TEXELS_PER_CHUNK):
        cancel.check()
        texel, face, bary = rasterize(flat, size, start, min(start + TEXELS_PER_CHUNK, size * size))
        corners = f[face]
        point = np.einsum("nk,nkd->nd", bary.astype(np.float64), v[corners])
        rgb[texel] = np.clip(_texture_at(scene, full, point) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        known[texel] = True
    texture = rgb.reshape(size, size, 3)
    push_pull_fill(texture, known.reshape(size, size))
    return Level(v[atlas.source], atlas.faces.astype(np.int64), normals[atlas.source], colours[atlas.source], atlas.uv_gl(), texture, simplified=True)


def _closest_point_scene(full: Level) -> object:
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(full.vertices.astype(np.float32)), o3d.core.Tensor(full.faces.astype(np.uint32)))
    return scene


def _closest(scene: object, full: Level, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners (N, 3) of the full-level face closest to each point and the barycentrics (N, 3) of the closest point."""
    import open3d as o3d

    hit = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))  # type: ignore[attr-defined]
    face = hit["primitive_ids"].numpy().astype(np.int64)
    uv = hit["primitive_uvs"].numpy().astype(np.float64)
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    return full.faces[face], bary


def _colours_at(scene: object, full: Level, points: np.ndarray) -> np.ndarray:
    corners, bary = _closest(scene, full, points)
    return np.einsum("nk,nkd->nd", bary, full.colours[corners])


def _texture_at(scene: object, full: Level, points: np.ndarray) -> np.ndarray:
    """RGB (N, 3, 0..1) of the full level's texture at the surface point closest to each point."""
    assert full.uv is not None and full.texture is not None
    corners, bary = _closest(scene, full, points)
    uv = np.einsum("nk,nkd->nd", bary, full.uv[corners].astype(np.float64))
    return sample_texture(full.texture, uv)
