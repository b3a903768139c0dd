"""The registered views of a COLMAP model as plain arrays, and the one pixel-convention conversion.

Two kinds of view exist in the pipeline, kept apart on purpose:

* :class:`ColmapView` (mesh, texture, export): the photo as COLMAP calibrated it, lens distortion
  included, in **COLMAP's pixel convention** -- the centre of the top-left pixel is ``(0.5, 0.5)``.
  Projection goes through ``pycolmap.Camera.img_from_cam``, so every camera model is honoured.
* :class:`pipelines.dense.views.PinholeView` (dense stage): an undistorted, downscaled working
  image with pinhole intrinsics ``K`` in **OpenCV's convention** -- integer coordinates are pixel
  centres, ``(0, 0)`` the top-left one -- as OpenCV's warps and remaps expect.

:func:`opencv_intrinsics` is the only place where one convention becomes the other.

Poses are camera-from-world (``x_cam = R @ x_world + t``) with COLMAP/OpenCV axes (x right, y down,
z forward), in model units.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ReconstructionFailed


@dataclass(frozen=True)
class ColmapView:
    """One registered photo: its COLMAP camera (distortion included, COLMAP pixel convention) and
    camera-from-world pose (model units)."""

    name: str
    """Image name inside the working images folder."""
    camera: Any
    """``pycolmap.Camera`` (intrinsics and distortion of the working image)."""
    R: np.ndarray
    """(3, 3) camera-from-world rotation."""
    t: np.ndarray
    """(3,) camera-from-world translation."""
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates: ``-R^T t``."""
        return -self.R.T @ self.t

    @property
    def up(self) -> np.ndarray:
        """The photo's "up" direction in world coordinates (the camera's -y axis)."""
        return -self.R[1]

    @property
    def forward(self) -> np.ndarray:
        """The viewing direction in world coordinates (the camera's +z axis)."""
        return self.R[2]

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) in this camera's frame (N, 3); z is the depth along the optical axis."""
        # einsum, not ``@``: BLAS threads contend with Open3D's on small inner dimensions
        return np.einsum("ij,kj->ik", points, self.R) + self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) and depths (N,) of world points (N, 3).

        Points behind the camera get NaN pixels; depth is in model units along the optical axis.
        """
        cam = self.to_camera(np.asarray(points, dtype=np.float64))
        uv = np.full((len(cam), 2), np.nan)
        front = cam[:, 2] > 1e-9
        if front.any():
            uv[front] = self.camera.img_from_cam(cam[front], check_cheirality=False)
        return uv, cam[:, 2]

    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Mask of pixel coordinates (N, 2) at least ``margin`` px inside the image (NaN is outside)."""
        with np.errstate(invalid="ignore"):
            return (uv[:, 0] >= margin) & (uv[:, 0] <= self.width - margin) & (uv[:, 1] >= margin) & (uv[:, 1] <= self.height - margin)

    @property
    def focal_px(self) -> float:
        return float(self.camera.mean_focal_length())

    @classmethod
    def from_image(cls, image: Any) -> ColmapView:
        """The view of a registered ``pycolmap.Image`` (its camera copied: the model's dies with the model)."""
        pose = image.cam_from_world()
        cam = copy.deepcopy(image.camera)
        return cls(
            name=image.name,
            camera=cam,
            R=np.asarray(pose.rotation.matrix(), dtype=np.float64),
            t=np.asarray(pose.translation, dtype=np.float64).reshape(3),
            width=int(cam.width),
            height=int(cam.height),
        )


def opencv_intrinsics(camera: Any, scale_x: float = 1.0, scale_y: float = 1.0) -> np.ndarray:
    """Pinhole ``K`` of ``camera`` (a ``pycolmap.Camera``) for its image resized by (scale_x, scale_y),
    in OpenCV's pixel convention.

    COLMAP's principal point is measured from the top-left corner of the image (pixel centres at
    half-integers); OpenCV's from the centre of the top-left pixel: ``c_opencv = c_colmap * s - 0.5``.
    Distortion is not part of ``K``: images must be undistorted to match it.
    """
    fx, fy = float(camera.focal_length_x), float(camera.focal_length_y)
    cx, cy = float(camera.principal_point_x), float(camera.principal_point_y)
    return np.array([[fx * scale_x, 0.0, cx * scale_x - 0.5], [0.0, fy * scale_y, cy * scale_y - 0.5], [0.0, 0.0, 1.0]])


def load_views(sparse_dir: Path, stage: str) -> list[ColmapView]:
    """The registered views of the COLMAP model in ``sparse_dir``, sorted by image name.

    Raises ``ReconstructionFailed(stage, ...)`` when the model cannot be read or holds no view.
    """
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(sparse_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError for unreadable models
        raise ReconstructionFailed(stage, f"cannot read the sparse model in {sparse_dir}: {exc}; rerun the sparse stage") from exc
    views = [ColmapView.from_image(rec.images[image_id]) for image_id in rec.reg_image_ids()]
    if not views:
        raise ReconstructionFailed(stage, f"the sparse model in {sparse_dir} has no registered photo; take more overlapping photos")
    return sorted(views, key=lambda v: v.name)


def observed_mask(points: np.ndarray, views: list[ColmapView], min_views: int = 1, margin: float = 0.0) -> np.ndarray:
    """Mask of world points (N, 3) inside the image of at least ``min_views`` views (no occlusion test)."""
    count = np.zeros(len(points), dtype=np.int32)
    for view in views:
        uv, depth = view.project(points)
        count += view.in_image(uv, margin) & (depth > 0)
    return count >= min_views


def convergence(views: list[ColmapView], min_spread: float = 0.1) -> tuple[np.ndarray, float] | None:
    """Where the photos look: the point nearest to all optical axes (least squares) and the
    median distance of the cameras from it (model units).

    ``None`` when the photos do not look at a common region: optical axes nearly parallel (the
    normal matrix's smallest eigenvalue below ``min_spread`` per view, e.g. a facade shot from
    one side) or the point behind half of the cameras.
    """
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for view in views:
        p = np.eye(3) - np.outer(view.forward, view.forward)
        a += p
        b += p @ view.center
    if len(views) < 2 or np.linalg.eigvalsh(a)[0] < min_spread * len(views):
        return None
    point = np.linalg.solve(a, b)
    in_front = np.mean([(point - v.center) @ v.forward > 0 for v in views])
    if in_front < 0.5:
        return None
    return point, float(np.median([np.linalg.norm(v.center - point) for v in views]))
