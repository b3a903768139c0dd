"""Dense stage, part 3: multi-view geometric filtering of depth maps and fusion into one point cloud.

A depth pixel is kept only when enough neighbouring views' depth maps agree with it: its 3D point,
projected into a neighbour, lands on a pixel whose own depth, projected back, returns within
``max_reprojection_px`` of the original pixel and within ``max_relative_depth_error`` of its
depth. Kept pixels become world points (the average of the agreeing views' points), coloured from
the reference image, with normals from the depth map's gradients oriented toward the camera.
Conventions as in :mod:`pipelines.dense.views` (camera-from-world poses, OpenCV pixels, depth =
camera z, model units).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.dense.views import PinholeView
from pipelines.files import atomic_path

NORMAL_WINDOW = 5
"""Side (px) of the window over which the point map is averaged before differentiating it for
normals; a single-pixel difference of a plane-sweep depth map is mostly noise."""
MIN_NORMAL_SUPPORT = 0.4
"""Fraction of the normal window that must have depth for a pixel to get a normal (and a point)."""


@dataclass(frozen=True)
class ConsistencySettings:
    min_consistent_views: int
    max_reprojection_px: float = 2.0
    max_relative_depth_error: float = 0.01


@dataclass
class ViewPoints:
    """World points fused from one reference view."""

    xyz: np.ndarray
    """(N, 3) float32, world coordinates."""
    rgb: np.ndarray
    """(N, 3) uint8."""
    normals: np.ndarray
    """(N, 3) float32, unit, world frame, pointing toward the camera that saw the point."""
    candidates: int
    """Pixels with a photometric depth before the geometric filter."""


def save_depth(path: Path, depth: np.ndarray) -> None:
    """Write a float32 depth map (camera z, 0 = none) as .npy via a temp name."""
    with atomic_path(path) as tmp:
        np.save(tmp, depth.astype(np.float32, copy=False))


def _rays(view: PinholeView) -> np.ndarray:
    """(H, W, 3) camera-frame rays with z = 1 through every pixel centre."""
    u, v = np.meshgrid(np.arange(view.width, dtype=np.float32), np.arange(view.height, dtype=np.float32))
    K = view.K
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)


def depth_normals(view: PinholeView, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normals (H, W, 3) in the camera frame facing the camera, ok (H, W) bool) from a depth map.

    The point map is averaged over a small window of valid pixels, then differentiated across
    the window; pixels with too few valid neighbours get no normal (``ok`` False).
    """
    import cv2

    valid = depth > 0
    points = _rays(view) * depth[..., None]
    ksize = (NORMAL_WINDOW, NORMAL_WINDOW)
    weight = cv2.boxFilter(valid.astype(np.float32), -1, ksize, normalize=False, borderType=cv2.BORDER_CONSTANT)
    smooth = np.empty_like(points)
    for c in range(3):
        smooth[..., c] = cv2.boxFilter(points[..., c], -1, ksize, normalize=False, borderType=cv2.BORDER_CONSTANT)
    smooth /= np.maximum(weight, 1.0)[..., None]
    s = NORMAL_WINDOW // 2
    du = np.zeros_like(smooth)
    dv = np.zeros_like(smooth)
    du[:, s:-s] = smooth[:, 2 * s:] - smooth[:, : -2 * s]
    dv[s:-s, :] = smooth[2 * s:, :] - smooth[: -2 * s, :]
    has = weight > 0
    ends = np.zeros_like(has)
    ends[s:-s, s:-s] = has[s:-s, 2 * s:] & has[s:-s, : -2 * s] & has[2 * s:, s:-s] & has[: -2 * s, s:-s]
    normals = np.cross(dv, du)
    length = np.linalg.norm(normals, axis=-1)
    ok = valid & ends & (weight >= MIN_NORMAL_SUPPORT * NORMAL_WINDOW**2) & (length > 0)
    normals /= np.maximum(length, 1e-12)[..., None]
    facing_away = np.einsum("hwc,hwc->hw", normals, points) > 0
    normals[facing_away] *= -1.0
    return normals.astype(np.float32), ok


def _pixel_transfer(src: PinholeView, dst: PinholeView) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) such that a pixel ``p`` of ``src`` at depth ``z`` is at ``z * M @ [u, v, 1] + c`` in
    ``dst``'s camera frame (metres-like model units, camera-from-world poses)."""
    R = dst.R @ src.R.T
    return (R @ np.linalg.inv(src.K)).astype(np.float32), (dst.t - R @ src.t).astype(np.float32)


def fuse_view(
    ref: PinholeView,
    ref_depth: np.ndarray,
    neighbours: list[tuple[PinholeView, np.ndarray]],
    settings: ConsistencySettings,
    check: Callable[[], None],
    claimed: dict[int, np.ndarray] | None = None,
) -> ViewPoints:
    """Keep the pixels of ``ref_depth`` that at least ``min_consistent_views`` neighbours confirm.

    Works on 1-D float32 arrays of the candidate pixels, one coordinate at a time (much faster
    than (N, 3) matrix products). Kept points are the mean of the reference point and the
    confirming neighbours' points, computed in the reference camera frame.

    ``claimed`` (view index -> bool HxW mask, updated in place) implements COLMAP-style
    bookkeeping: neighbour pixels that went into a kept point are marked, and the reference's
    own marked pixels are skipped, so a surface seen by ten views is not fused ten times.
    """
    rgb_image, _ = ref.load()
    normals_cam, normal_ok = depth_normals(ref, ref_depth)
    candidates = int((ref_depth > 0).sum())
    if claimed is not None and ref.index in claimed:
        normal_ok &= ~claimed[ref.index]
    vs, us = np.nonzero(normal_ok)
    matches: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (view, ref idx, row, col)
    z = ref_depth[vs, us]
    u = us.astype(np.float32)
    v = vs.astype(np.float32)
    K = ref.K
    count = np.zeros(len(z), np.int32)
    # Sum of the agreeing points in the reference camera frame, starting with the pixel's own point.
    sx = (u - np.float32(K[0, 2])) / np.float32(K[0, 0]) * z
    sy = (v - np.float32(K[1, 2])) / np.float32(K[1, 1]) * z
    sz = z.copy()
    for view, depth in neighbours:
        check()
        M, c = _pixel_transfer(ref, view)
        Kn = view.K.astype(np.float32)
        xn = [z * (M[i, 0] * u + M[i, 1] * v + M[i, 2]) + c[i] for i in range(3)]
        with np.errstate(divide="ignore", invalid="ignore"):
            un = np.rint(Kn[0, 0] * xn[0] / xn[2] + Kn[0, 2])
            vn = np.rint(Kn[1, 1] * xn[1] / xn[2] + Kn[1, 2])
        idx = np.flatnonzero((xn[2] > 0) & (un >= 0) & (un <= view.width - 1) & (vn >= 0) & (vn <= view.height - 1))
        ui, vi = un[idx], vn[idx]
        dn = depth[vi.astype(np.intp), ui.astype(np.intp)]
        has = dn > 0
        idx, ui, vi, dn = idx[has], ui[has], vi[has], dn[has]
        # The neighbour's own point at that pixel, in the reference camera frame.
        Mb, cb = _pixel_transfer(view, ref)
        xb = [dn * (Mb[i, 0] * ui + Mb[i, 1] * vi + Mb[i, 2]) + cb[i] for i in range(3)]
        zr = z[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            du = np.float32(K[0, 0]) * xb[0] / xb[2] + np.float32(K[0, 2]) - u[idx]
            dv = np.float32(K[1, 1]) * xb[1] / xb[2] + np.float32(K[1, 2]) - v[idx]
        good = (du * du + dv * dv <= settings.max_reprojection_px**2) & (
            np.abs(xb[2] - zr) <= settings.max_relative_depth_error * zr
        )
        idx = idx[good]
        matches.append((view.index, idx, vi[good].astype(np.intp), ui[good].astype(np.intp)))
        count[idx] += 1
        sx[idx] += xb[0][good]
        sy[idx] += xb[1][good]
        sz[idx] += xb[2][good]
    keep = count >= settings.min_consistent_views
    if claimed is not None:
        for index, idx, rows, cols in matches:
            if index in claimed:
                used = keep[idx]
                claimed[index][rows[used], cols[used]] = True
    n = (1 + count[keep]).astype(np.float32)
    cam = np.stack([sx[keep] / n, sy[keep] / n, sz[keep] / n], axis=1)
    R = ref.R.astype(np.float32)
    xyz = (cam - ref.t.astype(np.float32)) @ R  # world = R^T (cam - t)
    normals = normals_cam[vs[keep], us[keep]] @ R  # camera -> world
    return ViewPoints(xyz, rgb_image[vs[keep], us[keep]], normals, candidates)


class VoxelCloud:
    """Fused points merged on a voxel grid as they arrive, so memory stays bounded by the scene.

    Points are buffered and, whenever the buffer holds ``flush_points``, averaged per voxel
    (position, colour and normal; running sums plus counts keep the average exact across
    flushes). Voxel keys pack three signed 21-bit cell indices into one int64.
    """

    _BITS = 21
    _LIMIT = 1 << (_BITS - 1)

    def __init__(self, voxel_size: float, flush_points: int = 2_000_000) -> None:
        if voxel_size <= 0:
            raise ValueError("voxel_size must be positive")
        self.voxel_size = voxel_size
        self.flush_points = flush_points
        self._keys = np.zeros(0, np.int64)
        self._sums = np.zeros((0, 9), np.float64)  # xyz, rgb, normal
        self._counts = np.zeros(0, np.int64)
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self.dropped = 0
        """Points too far from the origin for the key range (thousands of voxels of nonsense)."""

    def add(self, part: ViewPoints) -> None:
        if len(part.xyz) == 0:
            return
        cells = np.floor(part.xyz / self.voxel_size)
        ok = np.all(np.abs(cells) < self._LIMIT - 1, axis=1)
        self.dropped += int((~ok).sum())
        cells = cells[ok].astype(np.int64) + self._LIMIT
        keys = (cells[:, 0] << (2 * self._BITS)) | (cells[:, 1] << self._BITS) | cells[:, 2]
        data = np.concatenate([part.xyz[ok], part.rgb[ok].astype(np.float32), part.normals[ok]], axis=1)
        self._buffer.append((keys, data))
        self._buffered += len(keys)
        if self._buffered >= self.flush_points:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        keys = np.concatenate([self._keys, *(k for k, _ in self._buffer)])
        new_data = np.concatenate([d for _, d in self._buffer])  # float32, the bulk of the memory
        old = len(self._keys)
        counts = np.concatenate([self._counts, np.ones(self._buffered, np.int64)])
        self._buffer, self._buffered = [], 0
        self._keys, inverse = np.unique(keys, return_inverse=True)
        n = len(self._keys)
        self._counts = np.bincount(inverse, weights=counts, minlength=n).astype(np.int64)
        sums = np.empty((n, 9), np.float64)
        for c in range(9):
            sums[:, c] = np.bincount(inverse[:old], weights=self._sums[:, c], minlength=n)
            sums[:, c] += np.bincount(inverse[old:], weights=new_data[:, c], minlength=n)
        self._sums = sums

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyz float64 (N, 3), rgb float64 0..1 (N, 3), unit normals (N, 3)) averaged per voxel."""
        self._flush()
        mean = self._sums / np.maximum(self._counts, 1)[:, None]
        normals = mean[:, 6:9]
        length = np.linalg.norm(normals, axis=1)
        keep = length > 1e-6  # opposite normals cancelling out: not a surface
        normals = normals[keep] / length[keep, None]
        return mean[keep, 0:3], np.clip(mean[keep, 3:6] / 255.0, 0.0, 1.0), normals


def write_point_cloud(
    path: Path,
    cloud_points: tuple[np.ndarray, np.ndarray, np.ndarray],
    outlier_neighbours: int = 8,
    outlier_std_ratio: float = 2.0,
) -> int:
    """Drop statistical outliers (Open3D) and write a binary PLY with colours and normals.

    Returns the point count. Written to a temp name in the same folder and renamed.
    """
    import open3d as o3d

    xyz, rgb, normals = cloud_points
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.colors = o3d.utility.Vector3dVector(rgb)
    cloud.normals = o3d.utility.Vector3dVector(normals)
    if len(cloud.points) > 4 * outlier_neighbours:
        cloud, _ = cloud.remove_statistical_outlier(outlier_neighbours, outlier_std_ratio)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), cloud, write_ascii=False, compressed=False):
            raise OSError(f"could not write {path}")
    return len(cloud.points)
