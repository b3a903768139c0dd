"""Texturing (stage 6): a UV atlas and a texture baked from the photos.

Every texel of the atlas (see :mod:`pipelines.texture.atlas`) knows its face and its 3D point. Each face
ranks the photos that see it and keeps those that agree on its colour (:mod:`pipelines.texture.select`:
visibility, ``cos^2 * focal / depth``, a photo-consistency vote that drops occluders and background).
A texel's colour is the weighted mean of those photos' pixels at its projection (COLMAP's camera
model, so lens distortion is honoured); the weights are interpolated from per-vertex values, so they
change smoothly across face borders and seams between views fade instead of jumping. Per-photo RGB
gains, fitted where two photos colour the same face, even out auto exposure and white balance.
Texels no photo sees take the colours of the seen surface around them (spread across mesh edges),
else the mesh's vertex colours; empty atlas space is filled by push-pull so bilinear and mip-mapped
lookups never fetch black.

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
from pipelines.texture.blend import exposure_gains, fill_from_neighbours, push_pull_fill, sample_photo
from pipelines.texture.raster import atlas_raycaster, rasterize
from pipelines.texture.select import MAX_BLEND_VIEWS, face_colours, rank_views, vertex_weights, vote
from pipelines.views import ColmapView, load_views

logger = logging.getLogger(__name__)

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
    rejected_views: int = 0
    """Face-photo pairs that saw a face but disagreed with the other photos on its colour (occluders, background)."""
    voted_views: int = 0
    """Face-photo pairs that took part in the photo-consistency vote."""
    filled_fraction: float = 0.0
    """Share of the surface area no photo sees that took its colour from the seen surface around it."""

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
            "rejected_views": self.rejected_views,
            "voted_views": self.voted_views,
            "filled_fraction": round(self.filled_fraction, 4),
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
        return _bake(vertices, faces, colours, sparse, work_dir, options, progress, cancel)
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


def _bake(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, sparse: SparseModel, work_dir: Path, options: TextureOptions, progress: StageProgress, cancel: CancelToken) -> TextureResult:
    size = options.texture_size
    views = load_views(Path(sparse.sparse_dir), "texture")
    images = [_read_image(Path(sparse.images_dir) / v.name, v) for v in views]
    atlas = build_atlas(vertices, faces, size, PADDING_TEXELS)
    progress(0.1, f"UV atlas with {atlas.num_charts} charts")
    cancel.check()

    scene = _raycaster(vertices, faces)
    order, score = rank_views(vertices, faces, views, scene, cancel)
    progress(0.2, "photos ranked per face")
    gains = exposure_gains(vertices, faces, order[:, :MAX_BLEND_VIEWS], views, images)
    cancel.check()
    colour, valid = face_colours(vertices, faces, order, views, images, gains)
    chosen = vote(order, score, colour, valid, options.photo_consistency)
    candidates = chosen.candidates
    progress(0.25, f"photo-consistency vote: {chosen.rejected} of {chosen.voted} face views disagree")
    vertex_weight = vertex_weights(faces, len(vertices), candidates, chosen.weights, len(views))
    fill, reached = fill_from_neighbours(faces, len(vertices), chosen.colour, colours)
    cancel.check()

    flat = atlas_raycaster(atlas)
    atlas_rgb = np.zeros((size * size, 3), dtype=np.uint8)
    known = np.zeros(size * size, dtype=bool)
    total = size * size
    for start in range(0, total, TEXELS_PER_CHUNK):
        cancel.check()
        texel, face, bary = rasterize(flat, size, start, min(start + TEXELS_PER_CHUNK, total))
        rgb = _bake_texels(face, bary, vertices, faces, fill, candidates, vertex_weight, views, images, gains)
        atlas_rgb[texel] = np.clip(rgb * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        known[texel] = True
        progress(0.3 + 0.6 * min(1.0, (start + TEXELS_PER_CHUNK) / total), "baking texture")

    texture = atlas_rgb.reshape(size, size, 3)
    push_pull_fill(texture, known.reshape(size, size))
    progress(0.95, "writing texture")

    texture_path = write_png(work_dir / "texture.png", texture, compression=1)
    seen = candidates[:, 0] >= 0
    filled = ~seen & reached[faces].any(axis=1)
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
        rejected_views=chosen.rejected,
        voted_views=chosen.voted,
        filled_fraction=float(area[filled].sum() / max(area.sum(), 1e-30)),
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
