"""Dense stage, part 1: the views — undistorted working images, source views and depth ranges.

Conventions used throughout the dense stage:

* Poses are **camera-from-world**: ``x_cam = R @ x_world + t`` (as in COLMAP), in model units
  (metres when the model is metric).
* Intrinsics ``K`` are for the undistorted, downscaled **working image** in the **OpenCV pixel
  convention**: integer coordinates are pixel centres, so ``(0, 0)`` is the centre of the top-left
  pixel. COLMAP puts the top-left pixel's centre at ``(0.5, 0.5)``; a :class:`PinholeView` is made
  from a :class:`~pipelines.views.ColmapView` by :meth:`PinholeView.from_colmap`, which converts
  through :func:`pipelines.views.opencv_intrinsics` (the one place that does).
* Depth is the camera-frame ``z`` coordinate (not the distance along the ray).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ReconstructionFailed
from pipelines.files import write_png, write_text_atomic
from pipelines.progress import CancelToken, StageProgress
from pipelines.views import ColmapView, opencv_intrinsics

logger = logging.getLogger(__name__)

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
MIN_SHARED_POINTS = 8
"""Fewest sparse points two views must share to be compared (with a sparse model that has points)."""
MIN_SOURCE_ANGLE_DEG = 2.0
"""Source views seeing the scene at a smaller triangulation angle give depth too imprecise to use."""
GOOD_ANGLE_DEG = (5.0, 40.0)
"""Triangulation angles in this range are equally good; outside it a view's score falls off."""


@dataclass(frozen=True)
class PinholeView:
    """One registered photo as the dense stage sees it: undistorted, at the working size, OpenCV pixels."""

    index: int
    name: str
    """Image name in the sparse model (relative to the images folder)."""
    K: np.ndarray
    """3x3 intrinsics of the working image, pixels, OpenCV convention (pixel centres at integers)."""
    R: np.ndarray
    """3x3 rotation, camera-from-world."""
    t: np.ndarray
    """Translation (3,), camera-from-world, model units."""
    width: int
    height: int
    image_path: Path
    """Undistorted colour working image (PNG, written by :func:`prepare_views`)."""
    mask_path: Path | None
    """PNG, 255 where the undistorted image has real content; ``None`` when every pixel does."""

    @classmethod
    def from_colmap(cls, index: int, view: ColmapView, width: int, height: int, image_path: Path, mask_path: Path | None) -> PinholeView:
        """The undistorted ``width`` x ``height`` working image of ``view``: same pose, pinhole ``K`` in OpenCV pixels."""
        K = opencv_intrinsics(view.camera, width / view.width, height / view.height)
        return cls(index, view.name, K, view.R.copy(), view.t.copy(), width, height, image_path, mask_path)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.R.T @ self.t

    @property
    def axis(self) -> np.ndarray:
        """Viewing direction (unit camera z axis) in world coordinates."""
        return self.R[2]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(colour uint8 HxWx3 RGB, valid bool HxW) of the working image."""
        import cv2

        bgr = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise ReconstructionFailed("dense", f"could not read the working image {self.image_path}; rerun the stage")
        valid = np.ones(bgr.shape[:2], bool)
        if self.mask_path is not None:
            valid = cv2.imread(str(self.mask_path), cv2.IMREAD_GRAYSCALE) > 127
        return bgr[:, :, ::-1], valid


@dataclass(frozen=True)
class ViewPlan:
    """What the depth step needs to know about one reference view."""

    sources: tuple[int, ...]
    """Indices of the source views, best first."""
    depth_min: float
    depth_max: float
    """Depth range to search (model units, camera z); 0 when the view has no sources."""


def _undistort_maps(camera: Any, K: np.ndarray, width: int, height: int, scale_x: float, scale_y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2.remap maps from the working image into the photo downscaled by (scale_x, scale_y).

    For each working pixel: the ray through it (pinhole ``K``), projected by the real camera
    model (with distortion) gives a pixel of the original photo, which is then scaled. Returns
    (map_x, map_y, valid) where valid marks pixels whose source lies inside the photo.
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1).reshape(-1, 3)
    distorted = np.asarray(camera.img_from_cam(rays))  # COLMAP convention, original photo pixels
    map_x = (distorted[:, 0] * scale_x - 0.5).reshape(height, width).astype(np.float32)
    map_y = (distorted[:, 1] * scale_y - 0.5).reshape(height, width).astype(np.float32)
    valid = np.isfinite(map_x) & np.isfinite(map_y)
    valid &= (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    return map_x, map_y, valid


def _write_png(path: Path, image: np.ndarray) -> None:
    try:
        write_png(path, image, channels="bgr")
    except OSError as exc:
        raise ReconstructionFailed("dense", str(exc)) from exc


def prepare_views(
    reconstruction: Any,
    images_dir: Path,
    out_dir: Path,
    max_image_size: int,
    progress: StageProgress,
    cancel: CancelToken,
) -> list[PinholeView]:
    """Undistort and downscale every registered image of ``reconstruction`` into ``out_dir``.

    The working image has the photo's aspect ratio, its longest side at most ``max_image_size``
    pixels, and the pinhole intrinsics of the original camera scaled to that size; pixels whose
    ray falls outside the photo are black and masked out. Photos are read without applying EXIF
    orientation, exactly as COLMAP read them.
    """
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    maps_by_camera: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    image_ids = sorted(reconstruction.reg_image_ids())
    views: list[PinholeView] = []
    for k, image_id in enumerate(image_ids):
        cancel.check()
        image = reconstruction.image(image_id)
        colmap_view = ColmapView.from_image(image)
        camera = colmap_view.camera
        w0, h0 = colmap_view.width, colmap_view.height
        scale = min(1.0, max_image_size / max(w0, h0))
        width, height = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        sx, sy = width / w0, height / h0
        K = opencv_intrinsics(camera, sx, sy)

        photo_path = images_dir / image.name
        photo = cv2.imread(str(photo_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if photo is None:
            raise ReconstructionFailed("dense", f"cannot read {photo_path}: the images folder does not match the sparse model")
        if photo.shape[:2] != (h0, w0):
            raise ReconstructionFailed(
                "dense",
                f"{image.name} is {photo.shape[1]}x{photo.shape[0]} px but its camera is {w0}x{h0}: "
                "the images folder does not match the sparse model",
            )
        small = photo if (width, height) == (w0, h0) else cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        mask_path: Path | None = None
        if camera.model_name in PINHOLE_MODELS:
            working = small
        else:
            if image.camera_id not in maps_by_camera:
                maps_by_camera[image.camera_id] = _undistort_maps(camera, K, width, height, sx, sy)
            map_x, map_y, valid = maps_by_camera[image.camera_id]
            working = cv2.remap(small, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            if not valid.all():
                mask_path = out_dir / f"{k:05d}_mask.png"
                _write_png(mask_path, valid.astype(np.uint8) * 255)
        image_path = out_dir / f"{k:05d}.png"
        _write_png(image_path, working)
        views.append(PinholeView.from_colmap(k, colmap_view, width, height, image_path, mask_path))
        progress((k + 1) / len(image_ids), f"undistorted {k + 1}/{len(image_ids)} images")
    return views


def _observations(reconstruction: Any, views: list[PinholeView]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(points (P, 3) world, per view the indices of the points it observes)."""
    index_of_image = {iid: k for k, iid in enumerate(sorted(reconstruction.reg_image_ids()))}
    point_ids = list(reconstruction.point3D_ids())
    xyz = np.zeros((len(point_ids), 3))
    seen: list[list[int]] = [[] for _ in views]
    for p, pid in enumerate(point_ids):
        point = reconstruction.point3D(pid)
        xyz[p] = point.xyz
        for element in point.track.elements:
            k = index_of_image.get(element.image_id)
            if k is not None:
                seen[k].append(p)
    return xyz, [np.unique(np.asarray(s, dtype=np.int64)) for s in seen]


def _frustum_points(views: list[PinholeView]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stand-in scene points when the model has no 3D points (e.g. a model of known cameras).

    Assumes the photos look at a common object: the point nearest to all optical axes (least
    squares). Each view gets a small cloud of points around where its axis passes that point, at
    a spread of a third of its distance, so co-visibility and depth ranges can be computed as if
    the sparse points were there. Falls back to points 10 baselines ahead when the axes are
    (near) parallel.
    """
    centers = np.array([v.center for v in views])
    axes = np.array([v.axis for v in views])
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(centers, axes, strict=True):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    spacing = np.median(np.linalg.norm(centers[:, None] - centers[None], axis=-1)[~np.eye(len(views), dtype=bool)]) if len(views) > 1 else 1.0
    target: np.ndarray | None = None
    if np.linalg.cond(A) < 1e6:
        target = np.linalg.solve(A, b)
        if np.mean(np.einsum("ij,ij->i", target - centers, axes) > 0) < 0.8:
            target = None  # the axes "meet" behind most cameras: not an object-centred capture
    rng = np.random.default_rng(0)
    xyz = []
    for c, a in zip(centers, axes, strict=True):
        dist = float((target - c) @ a) if target is not None else 10.0 * spacing
        dist = dist if dist > 0 else 10.0 * spacing
        xyz.append(c + a * dist + rng.normal(0, dist / 3.0, (64, 3)))
    pts = np.concatenate(xyz)
    seen = [_visible(v, pts) for v in views]
    return pts, seen


def _visible(view: PinholeView, pts: np.ndarray) -> np.ndarray:
    """Indices of ``pts`` in front of ``view`` and inside its image."""
    cam = pts @ view.R.T + view.t
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam @ view.K.T
        u, v = uv[:, 0] / z, uv[:, 1] / z
    inside = (z > 0) & (u >= 0) & (u <= view.width - 1) & (v >= 0) & (v <= view.height - 1)
    return np.flatnonzero(inside)


def _angle_weight(angle_deg: np.ndarray) -> np.ndarray:
    """Score of one shared point seen at triangulation angle ``angle_deg`` (1 inside GOOD_ANGLE_DEG)."""
    lo, hi = GOOD_ANGLE_DEG
    w = np.ones_like(angle_deg)
    w = np.where(angle_deg < lo, np.exp(-0.5 * ((angle_deg - lo) / 2.0) ** 2), w)
    w = np.where(angle_deg > hi, np.exp(-0.5 * ((angle_deg - hi) / 15.0) ** 2), w)
    return np.where(angle_deg < MIN_SOURCE_ANGLE_DEG, 0.0, w)


def plan_views(
    reconstruction: Any, views: list[PinholeView], num_source_views: int, check: Callable[[], None] = lambda: None
) -> tuple[list[ViewPlan], bool]:
    """Choose source views and a depth range for every view; returns (plans, used_sparse_points).

    Source views are scored by the sparse points both views observe, each weighted by its
    triangulation angle (best between 5 and 40 degrees, none below 2). The depth range covers
    the 2nd..98th percentile of the depths of the points the view sees, widened by 25% on both
    sides in inverse depth, so surfaces a little in front of or behind the sparse points are found.
    """
    xyz, seen = _observations(reconstruction, views)
    used_points = sum(len(s) >= MIN_SHARED_POINTS for s in seen) >= 2
    if not used_points:
        logger.info("sparse model has too few 3D points; choosing source views from camera geometry")
        xyz, seen = _frustum_points(views)
    membership = np.zeros((len(views), len(xyz)), bool)
    for k, s in enumerate(seen):
        membership[k, s] = True
    centers = np.array([v.center for v in views])
    plans = []
    for k, view in enumerate(views):
        check()
        pts = xyz[seen[k]]
        depths = (pts @ view.R.T + view.t)[:, 2]
        if len(pts) == 0 or not np.any(depths > 0):
            plans.append(ViewPlan((), 0.0, 0.0))
            continue
        shared = membership[:, seen[k]]
        candidates = np.flatnonzero(shared.sum(axis=1) >= MIN_SHARED_POINTS)
        candidates = candidates[candidates != k]
        # Triangulation angle of every point the reference sees, from every candidate camera.
        to_ref = pts - view.center
        to_ref /= np.linalg.norm(to_ref, axis=1, keepdims=True)
        to_src = pts[None, :, :] - centers[candidates, None, :]
        to_src /= np.maximum(np.linalg.norm(to_src, axis=2, keepdims=True), 1e-12)
        angles = np.degrees(np.arccos(np.clip(np.einsum("pc,vpc->vp", to_ref, to_src), -1.0, 1.0)))
        scores = np.where(shared[candidates], _angle_weight(angles), 0.0).sum(axis=1)
        ranked = np.argsort(-scores, kind="stable")
        order = [int(candidates[i]) for i in ranked if scores[i] > 0][:num_source_views]
        if not order:
            plans.append(ViewPlan((), 0.0, 0.0))
            continue
        near, far = np.percentile(depths[depths > 0], [2.0, 98.0])
        inv_far, inv_near = 1.0 / far, 1.0 / max(near, 1e-9)
        margin = 0.25 * (inv_near - inv_far) + 0.05 * inv_near
        inv_near, inv_far = inv_near + margin, max(inv_far - margin, inv_far * 0.5)
        plans.append(ViewPlan(tuple(order), 1.0 / inv_near, 1.0 / inv_far))
    return plans, used_points


def write_views_json(path: Path, views: list[PinholeView], plans: list[ViewPlan]) -> None:
    """Record the working cameras and plans (for researchers inspecting the stage's folder)."""
    data = [
        {
            "index": v.index,
            "name": v.name,
            "image": v.image_path.name,
            "width": v.width,
            "height": v.height,
            "K_opencv": v.K.tolist(),
            "cam_from_world_R": v.R.tolist(),
            "cam_from_world_t": v.t.tolist(),
            "sources": list(p.sources),
            "depth_range": [p.depth_min, p.depth_max],
        }
        for v, p in zip(views, plans, strict=True)
    ]
    write_text_atomic(path, json.dumps(data, indent=1))


def pixel_footprint(views: list[PinholeView], plans: list[ViewPlan]) -> float:
    """Median size of one working pixel on the surface (model units) at the middle of the depth range."""
    sizes = [
        math.sqrt(p.depth_min * p.depth_max) / float(v.K[0, 0])
        for v, p in zip(views, plans, strict=True)
        if p.sources
    ]
    return float(np.median(sizes)) if sizes else 0.0
