"""Meshing (stage 5): a clean, decimated, vertex-coloured triangle mesh from the fused dense points.

1. Region of interest: points that two photos observe, without the far background (points much
   farther from every photo than the median), so Poisson's octree resolution goes to the subject.
2. Points are merged to one per Poisson cell, and each normal is turned towards the photos that
   see the point unoccluded (a coarse z-buffer of the points per photo): screened Poisson needs
   normals that agree in sign.
3. Screened Poisson (Open3D) runs in a child process that a cancel can kill at once.
4. Its closed, extrapolating surface is trimmed where no point is near (``TRIM_DISTANCE_CELLS``;
   optionally also by Poisson density), cut to what some photo has in view, rid of floating
   pieces, decimated to the face budget (quadric, fast-simplification) and cleaned
   (degenerate, duplicate, non-manifold); vertex colours come from the nearest points.

All coordinates stay in the sparse model's frame and units.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import DensePoints, SparseModel
from pipelines.errors import ReconstructionFailed
from pipelines.files import atomic_path
from pipelines.geometry import face_adjacency, face_areas
from pipelines.mesh.poisson import PoissonProcess
from pipelines.mesh.simplify import simplify
from pipelines.options import MeshOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.views import ColmapView, convergence, load_views

logger = logging.getLogger(__name__)

MIN_POINTS = 1000
"""Fewer fused points than this cannot describe a surface worth meshing."""
MIN_FACES = 100
"""A mesh with fewer faces left after cleaning is reported as a failure, not exported."""
POINTS_PER_CELL = 1.0
"""Points are merged on a grid of 1 / POINTS_PER_CELL Poisson cells: denser input only costs time."""
POISSON_SECONDS_GUESS = 5.0
"""Typical Poisson time (s) on 2 cores; only shapes the progress reported while it runs."""
ROI_CAMERA_DISTANCE_FACTOR = 1.0
"""When the photos surround something, points farther from the point they look at than this
multiple of the cameras' median distance to it (per axis) are background."""
TRIM_DISTANCE_CELLS = 8.0
"""Poisson surface farther than this many octree cells from every point is invented: trimmed.
Gaps in the points up to about twice that are bridged."""
ZBUFFER_CELL_POINTS = 3.0
"""Width of a z-buffer cell for the visibility test, in point spacings (fewer leaves holes)."""
ZBUFFER_DEPTH_TOLERANCE = 0.03
"""A point this much (relative depth) behind the nearest point in its z-buffer cell is occluded."""


@dataclass(frozen=True)
class MeshResult:
    mesh_path: Path
    """PLY triangle mesh with vertex colours and normals, sparse-model frame."""
    num_vertices: int
    num_faces: int
    num_input_points: int
    num_points_used: int
    """Points that fed Poisson after merging and dropping those no two views observe."""
    poisson_depth: int
    poisson_faces: int
    """Faces of the raw Poisson surface, before trimming and decimation."""
    removed_components: int
    """Floating pieces removed."""
    surface_area: float
    """Area of the final mesh in model units squared."""

    def summary(self) -> dict[str, Any]:
        return {
            "vertices": self.num_vertices,
            "faces": self.num_faces,
            "input_points": self.num_input_points,
            "points_used": self.num_points_used,
            "poisson_depth": self.poisson_depth,
            "poisson_faces": self.poisson_faces,
            "removed_components": self.removed_components,
            "surface_area": round(self.surface_area, 6),
        }


def run(points: DensePoints, sparse: SparseModel, work_dir: Path, options: MeshOptions, progress: StageProgress, cancel: CancelToken) -> MeshResult:
    """Mesh ``points.points_path`` and write ``work_dir/mesh.ply``.

    Raises ``ReconstructionFailed("mesh", ...)`` when there are too few points or nothing is left
    of the surface after trimming.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    progress(0.0, "reading dense points")
    with PoissonProcess(work_dir) as poisson:  # starts now, so its imports overlap our work
        return _run(points, sparse, work_dir, options, progress, cancel, poisson)


def _run(points: DensePoints, sparse: SparseModel, work_dir: Path, options: MeshOptions, progress: StageProgress, cancel: CancelToken, poisson: PoissonProcess) -> MeshResult:
    import open3d as o3d

    xyz, normals, colours = _read_points(Path(points.points_path))
    num_input = len(xyz)
    views = load_views(Path(sparse.sparse_dir), "mesh")
    cancel.check()

    inside = _region_of_interest(xyz, views, options.background_depth_factor)
    xyz, normals, colours = xyz[inside], normals[inside], colours[inside]
    cell = 1.1 * float(np.max(xyz.max(axis=0) - xyz.min(axis=0))) / 2**options.poisson_depth  # Poisson's finest cell
    xyz, normals, colours = _merge_on_grid(xyz, normals, colours, cell / POINTS_PER_CELL)
    progress(0.05, f"{len(xyz)} points in the region the photos observe")
    cancel.check()

    keep, flip = _orient_towards_cameras(xyz, normals, views, cell, cancel)
    xyz, normals, colours = xyz[keep], np.where(flip[keep, None], -normals[keep], normals[keep]), colours[keep]
    if len(xyz) < MIN_POINTS:
        raise ReconstructionFailed("mesh", f"only {len(xyz)} dense points are seen by two or more photos (need {MIN_POINTS}); take more overlapping photos of a textured subject")
    progress(0.15, f"normals of {len(xyz)} points oriented; Poisson depth {options.poisson_depth}")
    cancel.check()

    def waiting(seconds: float) -> None:  # no progress comes out of Poisson: creep towards 0.7
        progress(0.15 + 0.55 * seconds / (seconds + POISSON_SECONDS_GUESS), f"Poisson surface ({seconds:.0f} s)")

    verts, faces, densities = poisson.reconstruct(xyz, normals, options.poisson_depth, cancel, waiting)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
    poisson_faces = len(faces)
    logger.info("Poisson depth %d: %d vertices, %d faces from %d points", options.poisson_depth, len(mesh.vertices), poisson_faces, len(xyz))
    progress(0.7, f"Poisson surface with {poisson_faces} faces; trimming")
    cancel.check()

    drop = densities < np.quantile(densities, options.density_trim_quantile) if options.density_trim_quantile > 0 else np.zeros(len(verts), bool)
    drop |= _far_from_points(verts, xyz, TRIM_DISTANCE_CELLS * cell)
    drop |= ~_seen_by_any(verts, views)
    mesh.remove_vertices_by_mask(drop)
    cancel.check()

    mesh, removed = _remove_small_components(mesh, options.min_component_fraction)
    progress(0.78, f"{len(mesh.triangles)} faces after trimming; decimating to {options.max_faces}")
    cancel.check()

    if len(mesh.triangles) > options.max_faces:
        mesh = _decimate(mesh, options.max_faces)
    progress(0.86, f"{len(mesh.triangles)} faces; cleaning")
    cancel.check()

    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_non_manifold_edges()
    mesh.remove_unreferenced_vertices()
    mesh, removed_late = _remove_small_components(mesh, options.min_component_fraction)  # cleaning can cut pieces off
    removed += removed_late
    if len(mesh.triangles) < MIN_FACES:
        raise ReconstructionFailed("mesh", f"the surface is empty after trimming ({len(mesh.triangles)} faces left); take more photos from all sides or lower mesh.density_trim_quantile")
    mesh.vertex_colors = o3d.utility.Vector3dVector(_transfer_colours(np.asarray(mesh.vertices), xyz, colours))
    mesh.compute_vertex_normals()
    progress(0.95, "writing mesh")

    mesh_path = work_dir / "mesh.ply"
    with atomic_path(mesh_path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False):
            raise ReconstructionFailed("mesh", f"could not write {mesh_path}; check free disk space")
    result = MeshResult(
        mesh_path=mesh_path,
        num_vertices=len(mesh.vertices),
        num_faces=len(mesh.triangles),
        num_input_points=num_input,
        num_points_used=len(xyz),
        poisson_depth=options.poisson_depth,
        poisson_faces=poisson_faces,
        removed_components=removed,
        surface_area=float(mesh.get_surface_area()),
    )
    logger.info("mesh: %s", result.summary())
    progress(1.0, f"mesh with {result.num_faces} faces")
    return result


def _read_points(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (N, 3), normals (N, 3, unit, sign arbitrary) and RGB colours in 0..1 (N, 3)."""
    import open3d as o3d

    if not path.is_file():
        raise ReconstructionFailed("mesh", f"no dense point cloud at {path}; rerun the dense stage")
    pcd = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(pcd.points, dtype=np.float64)
    if len(xyz) < MIN_POINTS:
        raise ReconstructionFailed("mesh", f"the dense cloud has only {len(xyz)} points (need {MIN_POINTS}); take more overlapping photos of a textured subject")
    finite = np.all(np.isfinite(xyz), axis=1)
    if not pcd.has_normals():
        logger.info("dense cloud has no normals; estimating them from neighbours")
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(16))
    normals = np.asarray(pcd.normals, dtype=np.float64)
    colours = np.asarray(pcd.colors, dtype=np.float64) if pcd.has_colors() else np.full_like(xyz, 0.7)
    return xyz[finite], normals[finite], colours[finite]


def _merge_on_grid(xyz: np.ndarray, normals: np.ndarray, colours: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per occupied voxel: mean position and colour, the normal of one member.

    Normals are not averaged because their signs are not yet consistent.
    """
    keys = np.floor((xyz - xyz.min(axis=0)) / voxel).astype(np.int64)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, first, inverse, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    if len(first) == len(xyz):
        return xyz, normals, colours
    mean = np.stack([np.bincount(inverse, xyz[:, k]) for k in range(3)], axis=1) / counts[:, None]
    col = np.stack([np.bincount(inverse, colours[:, k]) for k in range(3)], axis=1) / counts[:, None]
    return mean, normals[first], col


def _region_of_interest(xyz: np.ndarray, views: list[ColmapView], depth_factor: float, sample: int = 200_000) -> np.ndarray:
    """Mask of the points in the region the photos observe well.

    A point counts when at least two views have it in their image and the nearest of those is
    within ``depth_factor`` times the median such distance: farther points are background seen
    at grazing angles, and would spread Poisson's resolution over empty space (0 keeps them).
    When the photos surround something, points farther than ``ROI_CAMERA_DISTANCE_FACTOR``
    camera distances from the point they converge on are background too. The region is the box
    spanning the 0.5..99.5 percentiles (plus 2 %) of a random sample of the points that count.
    """
    rng = np.random.default_rng(0)
    pts = xyz[rng.choice(len(xyz), sample, replace=False)] if len(xyz) > sample else xyz
    count = np.zeros(len(pts), dtype=np.int32)
    nearest = np.full(len(pts), np.inf)
    for view in views:
        uv, depth = view.project(pts)
        inside = view.in_image(uv) & (depth > 0)
        nearest[inside] = np.minimum(nearest[inside], depth[inside])
        count += inside
    keep = count >= 2
    if not keep.any():
        raise ReconstructionFailed("mesh", "no dense point is seen by two photos; the dense cloud does not match the cameras, rerun the dense stage")
    if depth_factor > 0:
        keep &= nearest <= depth_factor * np.median(nearest[keep])
    target = convergence(views)
    near_target = np.ones(len(xyz), dtype=bool)
    if target is not None:  # photos taken around something: keep the region they surround
        centre, distance = target
        reach2 = (ROI_CAMERA_DISTANCE_FACTOR * distance) ** 2
        keep &= np.einsum("ij,ij->i", pts - centre, pts - centre) <= reach2
        near_target = np.einsum("ij,ij->i", xyz - centre, xyz - centre) <= reach2
    if keep.sum() < 3:
        raise ReconstructionFailed("mesh", "the dense points lie away from where the photos look; rerun the dense stage")
    lo, hi = np.percentile(pts[keep], 0.5, axis=0), np.percentile(pts[keep], 99.5, axis=0)
    pad = 0.02 * (hi - lo)
    return near_target & np.all((xyz >= lo - pad) & (xyz <= hi + pad), axis=1)


def _orient_towards_cameras(xyz: np.ndarray, normals: np.ndarray, views: list[ColmapView], spacing: float, cancel: CancelToken) -> tuple[np.ndarray, np.ndarray]:
    """Which points at least two views have in their image, and which normals must flip.

    Each view where a point is *visible* (no other point clearly in front of it in a coarse
    z-buffer of cells about ``ZBUFFER_CELL_POINTS`` point spacings wide) votes for the side it
    sees the point from, weighted by the cosine. Points no view sees unoccluded fall back to the
    vote of every view that has them in its image, weighted by inverse squared distance.
    """
    vote = np.zeros(len(xyz))
    fallback = np.zeros(len(xyz))
    in_frustum = np.zeros(len(xyz), dtype=np.int32)
    for view in views:
        cancel.check()
        uv, depth = view.project(xyz)
        inside = np.flatnonzero(view.in_image(uv) & (depth > 0))
        if len(inside) == 0:
            continue
        d = view.center - xyz[inside]
        dist = np.linalg.norm(d, axis=1)
        cos = np.einsum("ij,ij->i", normals[inside], d) / dist
        # z-buffer cells: a few point spacings at the median depth, in pixels
        cell_px = max(2.0, ZBUFFER_CELL_POINTS * spacing * view.focal_px / float(np.median(depth[inside])))
        cols = int(np.ceil(view.width / cell_px))
        idx = (uv[inside, 1] // cell_px).astype(np.int64) * cols + (uv[inside, 0] // cell_px).astype(np.int64)
        zbuf = np.full(int(idx.max()) + 1, np.inf)
        np.minimum.at(zbuf, idx, depth[inside])
        visible = depth[inside] <= zbuf[idx] * (1.0 + ZBUFFER_DEPTH_TOLERANCE) + 2 * spacing
        vote[inside[visible]] += cos[visible]
        fallback[inside] += cos / (dist * dist)
        in_frustum[inside] += 1
    decided = vote != 0
    flip = np.where(decided, vote < 0, fallback < 0)
    return in_frustum >= 2, flip


def _far_from_points(vertices: np.ndarray, xyz: np.ndarray, distance: float) -> np.ndarray:
    """Mask of vertices with no point within ``distance`` (model units)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xyz).query(vertices, k=1, distance_upper_bound=distance, workers=-1)
    return ~np.isfinite(dist)


def _seen_by_any(points: np.ndarray, views: list[ColmapView]) -> np.ndarray:
    seen = np.zeros(len(points), dtype=bool)
    for view in views:
        uv, depth = view.project(points)
        seen |= view.in_image(uv) & (depth > 0)
    return seen


def _remove_small_components(mesh: Any, min_fraction: float) -> tuple[Any, int]:
    """Drop pieces (faces connected through shared edges) whose area is below ``min_fraction``
    of the largest piece's area.

    Uses scipy's graph search: much faster than Open3D's ``cluster_connected_triangles`` on
    large meshes.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(mesh.triangles)
    if len(faces) == 0:
        return mesh, 0
    verts = np.asarray(mesh.vertices)
    n, f = len(verts), len(faces)
    src, dst = face_adjacency(faces, n)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(f, f))
    count, label = connected_components(graph, directed=False)
    if count == 1:
        return mesh, 0
    area = face_areas(verts, faces)
    piece_area = np.bincount(label, weights=area, minlength=count)
    small = piece_area < min_fraction * piece_area.max()
    if small.any():
        mesh.remove_triangles_by_mask(small[label])
        mesh.remove_unreferenced_vertices()
    return mesh, int(small.sum())


def _decimate(mesh: Any, max_faces: int) -> Any:
    """Quadric decimation to at most ``max_faces`` faces (colours are re-transferred afterwards)."""
    import open3d as o3d

    v, f = simplify(np.asarray(mesh.vertices), np.asarray(mesh.triangles), max_faces)
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))


def _transfer_colours(vertices: np.ndarray, xyz: np.ndarray, colours: np.ndarray, k: int = 4) -> np.ndarray:
    """Vertex colours: inverse-distance mean of the ``k`` nearest points' colours (0..1 RGB)."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(xyz).query(vertices, k=k, workers=-1)
    w = 1.0 / np.maximum(dist, 1e-12)
    return np.clip(np.einsum("ij,ijk->ik", w, colours[idx]) / w.sum(axis=1, keepdims=True), 0.0, 1.0)
