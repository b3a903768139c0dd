"""Texturing (stage 6): a UV atlas and a texture baked from the photos.

Every texel of the atlas (see :mod:`pipelines.texture.atlas`) knows its face and its 3D point. Each face
ranks the photos that see it (in the image, not occluded by the mesh, facing the camera) by
``cos^2 * focal / depth`` -- frontal and close views first -- and keeps up to ``MAX_BLEND_VIEWS``
that score within ``BLEND_RATIO`` of the best. A texel's colour is the weighted mean of those
photos' pixels at its projection (COLMAP's camera model, so lens distortion is honoured); the
weights are interpolated from per-vertex values, so they change smoothly across face borders and
seams between views fade instead of jumping. Per-photo RGB gains, fitted where two photos colour
the same face, even out auto exposure and white balance. Texels no photo sees keep the mesh's vertex colours;
empty atlas space is filled by push-pull so bilinear and mip-mapped lookups never fetch black.

If baking is disabled or fails, the result keeps vertex colours and says why
(``fallback_reason``); export then writes a vertex-coloured model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import SparseModel, Surface
from pipelines.errors import Cancelled, ReconstructionFailed
from pipelines.files import atomic_path, write_png
from pipelines.geometry import face_areas, vertex_normals
from pipelines.options import TextureOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.texture.atlas import build_atlas
from pipelines.texture.blend import IMAGE_MARGIN, exposure_gains, push_pull_fill, sample_photo
from pipelines.texture.raster import atlas_raycaster, rasterize
from pipelines.views import ColmapView, load_views

logger = logging.getLogger(__name__)

MAX_BLEND_VIEWS = 2
"""Photos blended per face (more hides exposure seams better, and costs baking time)."""
BLEND_RATIO = 0.6
"""Views scoring below this fraction of a face's best view do not colour it."""
MIN_VIEW_COSINE = 0.2
"""Views seeing a face at more than ~78 deg from its normal are not used."""
PADDING_TEXELS = 2
"""Free texels around each chart, filled by push-pull (bilinear and the first mip levels stay clean)."""
TEXELS_PER_CHUNK = 1 << 21
"""Texels rasterized and baked at a time (bounds memory; about a second of work on 2 cores)."""


@dataclass(frozen=True)
class TextureResult:
    mesh: Path
    """``.npz`` with ``vertices`` (A, 3) float64 in the sparse-model frame, ``faces`` (F, 3) int32,
    ``normals`` (A, 3) and ``colors`` (A, 3, 0..1) float32 and, when textured, ``uv`` (A, 2)
    float32 in the OpenGL convention (v up). Vertices are split along UV seams."""
    texture_path: Path | None
    """PNG of the atlas (sRGB, as in the photos); ``None`` when not textured."""
    textured: bool
    texture_size: int
    """Atlas side in pixels; 0 when not textured."""
    fallback_reason: str | None
    """Why the model keeps vertex colours; ``None`` when textured."""
    num_vertices: int
    num_faces: int
    num_charts: int = 0
    views_used: int = 0
    """Photos that colour at least one face."""
    seen_fraction: float = 0.0
    """Share of the surface area that at least one photo sees."""
    texel_size: float = 0.0
    """Surface length of one texel, model units."""
    atlas_fill: float = 0.0
    """Share of the atlas covered by chart rectangles (packing efficiency)."""
    exposure_gains: tuple[float, ...] = ()
    """Brightness factor applied to each photo (sorted by image name) to even out exposure."""

    def summary(self) -> dict[str, Any]:
        return {
            "textured": self.textured,
            "texture_size": self.texture_size,
            "fallback_reason": self.fallback_reason,
            "vertices": self.num_vertices,
            "faces": self.num_faces,
            "charts": self.num_charts,
            "views_used": self.views_used,
            "seen_fraction": round(self.seen_fraction, 4),
            "texel_size": self.texel_size,
            "atlas_fill": round(self.atlas_fill, 4),
            "exposure_gain_range": [min(self.exposure_gains), max(self.exposure_gains)] if self.exposure_gains else None,
        }


def run(surface: Surface, sparse: SparseModel, work_dir: Path, options: TextureOptions, progress: StageProgress, cancel: CancelToken) -> TextureResult:
    """Bake ``work_dir/texture.png`` and ``work_dir/textured_mesh.npz`` for ``surface``.

    Falls back to vertex colours (``textured=False`` and a ``fallback_reason``) when
    ``options.enabled`` is false or baking fails; raises only ``Cancelled`` and
    ``ReconstructionFailed`` for an unreadable mesh.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    progress(0.0, "reading mesh")
    vertices, faces, colours = _read_mesh(Path(surface.mesh_path))
    if not options.enabled:
        return _write_untextured(work_dir, vertices, faces, colours, "texture.enabled is false")
    try:
        return _bake(vertices, faces, colours, sparse, work_dir, options.texture_size, progress, cancel)
    except Cancelled:
        raise
    except Exception as exc:  # recorded, not silent: the model keeps vertex colours and says why
        logger.warning("texture baking failed; keeping vertex colours", exc_info=True)
        return _write_untextured(work_dir, vertices, faces, colours, f"texture baking failed: {type(exc).__name__}: {exc}")


def _read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import open3d as o3d

    if not path.is_file():
        raise ReconstructionFailed("texture", f"no mesh at {path}; rerun the mesh stage")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise ReconstructionFailed("texture", f"the mesh {path} has no faces; rerun the mesh stage")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    colours = np.asarray(mesh.vertex_colors, dtype=np.float64) if mesh.has_vertex_colors() else np.full_like(vertices, 0.7)
    return vertices, np.asarray(mesh.triangles, dtype=np.int64), colours


def _bake(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, sparse: SparseModel, work_dir: Path, size: int, progress: StageProgress, cancel: CancelToken) -> TextureResult:
    views = load_views(Path(sparse.sparse_dir), "texture")
    images = [_read_image(Path(sparse.images_dir) / v.name, v) for v in views]
    atlas = build_atlas(vertices, faces, size, PADDING_TEXELS)
    progress(0.1, f"UV atlas with {atlas.num_charts} charts")
    cancel.check()

    scene = _raycaster(vertices, faces)
    candidates, weights = _rank_views(vertices, faces, views, scene, cancel)
    progress(0.25, "photos ranked per face")
    vertex_weight = _vertex_weights(faces, len(vertices), candidates, weights, len(views))
    gains = exposure_gains(vertices, faces, candidates, views, images)
    cancel.check()

    flat = atlas_raycaster(atlas)
    atlas_rgb = np.zeros((size * size, 3), dtype=np.uint8)
    known = np.zeros(size * size, dtype=bool)
    total = size * size
    for start in range(0, total, TEXELS_PER_CHUNK):
        cancel.check()
        texel, face, bary = rasterize(flat, size, start, min(start + TEXELS_PER_CHUNK, total))
        rgb = _bake_texels(face, bary, vertices, faces, colours, candidates, vertex_weight, views, images, gains)
        atlas_rgb[texel] = np.clip(rgb * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        known[texel] = True
        progress(0.3 + 0.6 * min(1.0, (start + TEXELS_PER_CHUNK) / total), "baking texture")

    texture = atlas_rgb.reshape(size, size, 3)
    push_pull_fill(texture, known.reshape(size, size))
    progress(0.95, "writing texture")

    texture_path = write_png(work_dir / "texture.png", texture, compression=1)
    seen = candidates[:, 0] >= 0
    area = face_areas(vertices, faces)
    mesh_path = _write_npz(work_dir / "textured_mesh.npz", vertices[atlas.source], atlas.faces, vertex_normals(vertices, faces)[atlas.source], colours[atlas.source], atlas.uv_gl())
    result = TextureResult(
        mesh=mesh_path,
        texture_path=texture_path,
        textured=True,
        texture_size=size,
        fallback_reason=None,
        num_vertices=len(atlas.source),
        num_faces=len(faces),
        num_charts=atlas.num_charts,
        views_used=int(len(np.unique(candidates[candidates >= 0]))),
        seen_fraction=float(area[seen].sum() / max(area.sum(), 1e-30)),
        texel_size=float(atlas.texel_size),
        atlas_fill=float(atlas.fill),
        exposure_gains=tuple(round(float(g), 4) for g in gains.mean(axis=1)),
    )
    logger.info("texture: %s", result.summary())
    progress(1.0, f"texture {size}x{size} baked from {result.views_used} photos")
    return result


def _bake_texels(
    face: np.ndarray,
    bary: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    colours: np.ndarray,
    candidates: np.ndarray,
    vertex_weight: np.ndarray,
    views: list[ColmapView],
    images: list[np.ndarray],
    gains: np.ndarray,
) -> np.ndarray:
    """RGB (N, 3, 0..1) of texels given by face (N,) and barycentrics (N, 3): blended photos
    (each times its exposure ``gains`` (views, 3)), else the interpolated vertex colours."""
    corners = faces[face]
    # One (texel, view) pair per candidate view, grouped by view (a radix sort on small ints).
    cand = candidates[face]
    texel, slot = np.nonzero(cand >= 0)
    view = cand[texel, slot].astype(np.int16)
    order = np.argsort(view, kind="stable")
    texel, view = texel[order], view[order]
    bounds = np.searchsorted(view, np.arange(len(views) + 1))
    point = bary[:, :1] * vertices[corners[:, 0]] + bary[:, 1:2] * vertices[corners[:, 1]] + bary[:, 2:] * vertices[corners[:, 2]]
    num_vertices = vertex_weight.shape[1]
    flat_weight = vertex_weight.reshape(-1)
    weight = np.zeros(len(texel), dtype=np.float32)
    rgb = np.zeros((len(texel), 3), dtype=np.float32)
    for vi in range(len(views)):
        lo, hi = bounds[vi], bounds[vi + 1]
        if hi == lo:
            continue
        t = texel[lo:hi]
        c = corners[t] + vi * num_vertices
        b = bary[t]
        rgb[lo:hi], ok = sample_photo(images[vi], views[vi], point[t])
        rgb[lo:hi] *= gains[vi]
        weight[lo:hi] = (b[:, 0] * flat_weight[c[:, 0]] + b[:, 1] * flat_weight[c[:, 1]] + b[:, 2] * flat_weight[c[:, 2]]) * ok
    n = len(face)
    total = np.bincount(texel, weight, minlength=n)
    out = np.stack([np.bincount(texel, weight * rgb[:, k], minlength=n) for k in range(3)], axis=1) / np.maximum(total, 1e-12)[:, None]
    none = total <= 1e-6
    if none.any():
        out[none] = sum(bary[none, k : k + 1] * colours[corners[none, k]] for k in range(3))
    return out.astype(np.float32)


def _raycaster(vertices: np.ndarray, faces: np.ndarray) -> Any:
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene


def _rank_views(vertices: np.ndarray, faces: np.ndarray, views: list[ColmapView], scene: Any, cancel: CancelToken) -> tuple[np.ndarray, np.ndarray]:
    """Per face, up to ``MAX_BLEND_VIEWS`` view indices (-1 = none) and their weights in 0..1.

    A view sees a face when the face's centroid is inside its image, nothing of the mesh is in
    between (ray cast), and it faces the camera within ``MIN_VIEW_COSINE``.
    """
    import open3d as o3d

    centroid = vertices[faces].mean(axis=1)
    normal = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
    # running top-K (K = MAX_BLEND_VIEWS) so memory stays O(faces), whatever the number of photos
    top = np.zeros((len(faces), MAX_BLEND_VIEWS + 1), dtype=np.float32)
    order = np.full((len(faces), MAX_BLEND_VIEWS + 1), -1, dtype=np.int64)
    rows = np.arange(len(faces))[:, None]
    for vi, view in enumerate(views):
        cancel.check()
        uv, depth = view.project(centroid)
        idx = np.flatnonzero(view.in_image(uv, IMAGE_MARGIN) & (depth > 0))
        d = centroid[idx] - view.center
        dist = np.linalg.norm(d, axis=1)
        d /= dist[:, None]
        cos = np.abs(np.einsum("ij,ij->i", d, normal[idx]))  # winding-agnostic; occlusion decides the side
        front = cos >= MIN_VIEW_COSINE
        idx, d, dist, cos = idx[front], d[front], dist[front], cos[front]
        rays = np.concatenate([np.broadcast_to(view.center, d.shape), d], axis=1).astype(np.float32)
        t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        visible = t_hit >= dist * (1.0 - 1e-3) - 1e-6
        idx = idx[visible]
        top[:, -1], order[:, -1] = 0.0, -1
        top[idx, -1], order[idx, -1] = cos[visible] ** 2 * view.focal_px / depth[idx], vi
        rank = np.argsort(-top, axis=1, kind="stable")
        top, order = top[rows, rank], order[rows, rank]
    top, order = top[:, :MAX_BLEND_VIEWS], order[:, :MAX_BLEND_VIEWS]
    best = np.maximum(top[:, :1], 1e-30)
    ratio = top / best
    keep = (top > 0) & (ratio >= BLEND_RATIO)
    candidates = np.where(keep, order, -1)
    weights = np.where(keep, ratio**4, 0.0).astype(np.float32)
    return candidates, weights


def _vertex_weights(faces: np.ndarray, num_vertices: int, candidates: np.ndarray, weights: np.ndarray, num_views: int) -> np.ndarray:
    """(views, V) mean over a vertex's faces of each view's face weight (0 where it is no candidate)."""
    per_vertex = np.zeros((num_views, num_vertices), dtype=np.float32)
    count = np.bincount(faces.reshape(-1), minlength=num_vertices).astype(np.float32)
    for slot in range(candidates.shape[1]):
        ok = candidates[:, slot] >= 0
        for k in range(3):
            np.add.at(per_vertex, (candidates[ok, slot], faces[ok, k]), weights[ok, slot])
    return per_vertex / np.maximum(count, 1.0)[None, :]


def _read_image(path: Path, view: ColmapView) -> np.ndarray:
    """RGB uint8 image of a view (uint8 keeps 50 photos of 1600 px in ~300 MB); its size must match the camera's."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReconstructionFailed("texture", f"cannot read the working image {path}; rerun from the ingest stage")
    if bgr.shape[1] != view.width or bgr.shape[0] != view.height:
        raise ReconstructionFailed("texture", f"{path.name} is {bgr.shape[1]}x{bgr.shape[0]} but its camera is {view.width}x{view.height}; rerun from the ingest stage")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _write_npz(path: Path, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, colours: np.ndarray, uv: np.ndarray | None) -> Path:
    arrays: dict[str, np.ndarray] = {
        "vertices": np.asarray(vertices, dtype=np.float64),
        "faces": np.asarray(faces, dtype=np.int32),
        "normals": np.asarray(normals, dtype=np.float32),
        "colors": np.asarray(colours, dtype=np.float32),
    }
    if uv is not None:
        arrays["uv"] = np.asarray(uv, dtype=np.float32)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def _write_untextured(work_dir: Path, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, reason: str) -> TextureResult:
    logger.info("texture: keeping vertex colours (%s)", reason)
    path = _write_npz(work_dir / "textured_mesh.npz", vertices, faces, vertex_normals(vertices, faces), colours, None)
    return TextureResult(mesh=path, texture_path=None, textured=False, texture_size=0, fallback_reason=reason, num_vertices=len(vertices), num_faces=len(faces))
