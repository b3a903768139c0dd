"""Test inputs for the mesh, texture and export stages, made from a fixture scene's ground truth.

The stages downstream of dense stereo only need a sparse model (cameras) and a fused point cloud.
Here both come from ground truth: the exact cameras as a COLMAP model, and a *simulated* fused
cloud made by ray casting the GT mesh through a grid of pixels of every photo (as depth maps
would), coloured from the photos, then spoiled with depth noise, outliers and randomly flipped
normals. Everything is in the scene's world frame: metres, Z up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fixtures import groundtruth


@dataclass(frozen=True)
class GtSparse:
    """Duck-types the sparse stage's result: a COLMAP model of the exact cameras and the photos."""

    sparse_dir: Path
    images_dir: Path


@dataclass(frozen=True)
class SimulatedPoints:
    """Duck-types the dense stage's result: a PLY with colours and normals."""

    points_path: Path
    num_points: int


@dataclass(frozen=True)
class GtSurface:
    """Duck-types the mesh stage's result with the ground-truth mesh (cut to the crop box)."""

    mesh_path: Path
    num_vertices: int
    num_faces: int


def gt_sparse(scene_dir: Path, out_dir: Path) -> GtSparse:
    """Write the scene's exact cameras as a COLMAP model into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groundtruth.to_colmap_reconstruction(scene_dir).write(str(out_dir))
    return GtSparse(out_dir, Path(scene_dir) / "images")


def simulated_dense_points(
    scene_dir: Path,
    out_path: Path,
    *,
    stride: int = 4,
    depth_noise: float = 0.002,
    outlier_fraction: float = 0.01,
    flip_fraction: float = 0.3,
    max_depth: float = 4.0,
    seed: int = 0,
) -> SimulatedPoints:
    """A fused-cloud stand-in: one point per ``stride``-th pixel of every photo that hits the GT mesh.

    ``depth_noise`` is the relative depth error (0.002 = 2 mm at 1 m) along the ray; a
    ``outlier_fraction`` of extra points is scattered uniformly in the cloud's bounding box; a
    ``flip_fraction`` of normals points away from the camera (the mesh stage must re-orient them).
    """
    import cv2
    import open3d as o3d

    rng = np.random.default_rng(seed)
    mesh = groundtruth.load_mesh(scene_dir)
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    tri_n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    tri_n /= np.linalg.norm(tri_n, axis=1, keepdims=True)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32)))
    pts, cols, nrm = [], [], []
    for cam in groundtruth.load_cameras(scene_dir):
        img = cv2.imread(str(Path(scene_dir) / "images" / cam.name), cv2.IMREAD_COLOR)[:, :, ::-1]
        rows, cols_ = np.mgrid[stride // 2 : cam.height : stride, stride // 2 : cam.width : stride]
        pix = np.stack([cols_.ravel() + 0.5, rows.ravel() + 0.5, np.ones(rows.size)], axis=1)
        dirs = (pix @ np.linalg.inv(cam.K).T) @ cam.R  # world directions of the pixel rays
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        rays = np.concatenate([np.broadcast_to(cam.center, dirs.shape), dirs], axis=1).astype(np.float32)
        hit = scene.cast_rays(o3d.core.Tensor(rays))
        dist = hit["t_hit"].numpy().astype(np.float64)
        prim = hit["primitive_ids"].numpy()
        ok = np.isfinite(dist) & (dist < max_depth)
        dist = dist[ok] * (1.0 + depth_noise * rng.standard_normal(ok.sum()))
        p = cam.center + dirs[ok] * dist[:, None]
        n = tri_n[prim[ok]]
        n *= np.where(np.sum(n * dirs[ok], axis=1) > 0, -1.0, 1.0)[:, None]  # towards the camera
        pts.append(p)
        nrm.append(n)
        cols.append(img[rows.ravel()[ok], cols_.ravel()[ok]] / 255.0)
    p, n, c = np.concatenate(pts), np.concatenate(nrm), np.concatenate(cols)
    n_out = int(outlier_fraction * len(p))
    lo, hi = p.min(axis=0), p.max(axis=0)
    p = np.concatenate([p, rng.uniform(lo, hi, (n_out, 3))])
    n = np.concatenate([n, _unit(rng.standard_normal((n_out, 3)))])
    c = np.concatenate([c, rng.uniform(0, 1, (n_out, 3))])
    flip = rng.random(len(n)) < flip_fraction
    n[flip] *= -1.0
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    pcd.normals = o3d.utility.Vector3dVector(n)
    pcd.colors = o3d.utility.Vector3dVector(c)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    o3d.io.write_point_cloud(str(out_path), pcd)
    return SimulatedPoints(out_path, len(p))


def gt_surface(scene_dir: Path, out_path: Path, *, margin: float = 0.1, max_edge: float = 0.02) -> GtSurface:
    """The GT mesh cut to the crop box enlarged by ``margin`` metres, as a PLY (no colours).

    Triangles are split until no edge is longer than ``max_edge`` metres, like the small,
    even faces of a decimated Poisson mesh (the GT's big ground cells would be unlike any input).
    """
    import open3d as o3d

    mesh = groundtruth.load_mesh(scene_dir)
    crop = groundtruth.load_crop(scene_dir)
    box = o3d.geometry.AxisAlignedBoundingBox(crop.min - margin, crop.max + margin)
    mesh = mesh.crop(box).remove_unreferenced_vertices()
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    while True:  # split long triangles 1:4 at their edge midpoints (T-junctions are harmless here)
        long = np.linalg.norm(v[t] - v[t[:, [1, 2, 0]]], axis=2).max(axis=1) > max_edge
        if not long.any():
            break
        a, b, c = t[long, 0], t[long, 1], t[long, 2]
        base = len(v)
        n = int(long.sum())
        mab, mbc, mca = base + np.arange(n), base + n + np.arange(n), base + 2 * n + np.arange(n)
        v = np.concatenate([v, (v[a] + v[b]) / 2, (v[b] + v[c]) / 2, (v[c] + v[a]) / 2])
        t = np.concatenate([t[~long], np.stack([a, mab, mca], 1), np.stack([mab, b, mbc], 1), np.stack([mca, mbc, c], 1), np.stack([mab, mbc, mca], 1)])
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t.astype(np.int32)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    o3d.io.write_triangle_mesh(str(out_path), mesh)
    return GtSurface(out_path, len(mesh.vertices), len(mesh.triangles))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
