"""The model frame of the deliverables: +Y up, standing on y = 0, centred on x = z = 0, facing the first photo.

"Up" is the mean of the cameras' up directions (people hold phones upright), replaced by the
normal of the dominant ground plane when one agrees with it within ``GROUND_MAX_TILT_DEG``. The
model is turned about +Y so that the first photo was taken from the +Z side (what glTF viewers and
AR Quick Look show first).
"""

from __future__ import annotations

import logging

import numpy as np

from pipelines.geometry import sample_surface
from pipelines.views import ColmapView

logger = logging.getLogger(__name__)

GROUND_MAX_TILT_DEG = 30.0
"""A plane whose normal is farther than this from the cameras' up is not the ground."""
GROUND_MIN_SHARE = 0.1
"""The ground plane must hold at least this share of the surface area."""


def gravity_up(vertices: np.ndarray, faces: np.ndarray, views: list[ColmapView]) -> tuple[np.ndarray, str]:
    """The world's up direction (unit, sparse frame) and what decided it.

    Starts from the mean of the cameras' up vectors (their -y axes); if one of the three largest
    planes of the surface (RANSAC on area-uniform samples) is within ``GROUND_MAX_TILT_DEG`` of it
    and holds ``GROUND_MIN_SHARE`` of the area, its normal -- pointing to the cameras' side -- wins.
    """
    import open3d as o3d

    camera_up = np.mean([v.up for v in views], axis=0)
    if np.linalg.norm(camera_up) < 1e-6:  # cameras disagree completely; any choice is a guess
        camera_up = views[0].up
    camera_up = camera_up / np.linalg.norm(camera_up)

    rng = np.random.default_rng(0)
    samples = sample_surface(vertices, faces, 30_000, rng)
    diagonal = float(np.linalg.norm(samples.max(axis=0) - samples.min(axis=0)))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(samples))
    o3d.utility.random.seed(0)  # the same mesh always gives the same model frame
    total = len(samples)
    for _ in range(3):
        if len(pcd.points) < 3 or len(pcd.points) < GROUND_MIN_SHARE * total:
            break
        plane, inliers = pcd.segment_plane(distance_threshold=0.005 * diagonal, ransac_n=3, num_iterations=300)
        normal = np.asarray(plane[:3], dtype=np.float64)
        normal /= np.linalg.norm(normal)
        if normal @ camera_up < 0:
            normal = -normal
        tilt = np.degrees(np.arccos(np.clip(normal @ camera_up, -1.0, 1.0)))
        share = len(inliers) / total
        if share < GROUND_MIN_SHARE:
            break
        if tilt <= GROUND_MAX_TILT_DEG:
            logger.info("ground plane: %.0f %% of the surface, %.1f deg from the cameras' up", 100 * share, tilt)
            return normal, "ground plane"
        pcd = pcd.select_by_index(inliers, invert=True)
    return camera_up, "cameras"


def model_rotation(up: np.ndarray, vertices: np.ndarray, views: list[ColmapView]) -> np.ndarray:
    """Rotation (rows = model axes in sparse coordinates): +Y = up, +Z towards the first photo."""
    y = up / np.linalg.norm(up)
    towards = views[0].center - vertices.mean(axis=0)
    z = towards - (towards @ y) * y
    if np.linalg.norm(z) < 1e-9 * max(1.0, np.linalg.norm(towards)):  # first photo straight above
        z = -views[0].up - (-views[0].up @ y) * y
    if np.linalg.norm(z) < 1e-12:
        z = np.cross(y, [1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.cross(y, [0.0, 0.0, 1.0])
    z /= np.linalg.norm(z)
    x = np.cross(y, z)
    return np.stack([x, y, z])


def subject_box(vertices: np.ndarray, faces: np.ndarray, margin: float = 0.15) -> tuple[np.ndarray, np.ndarray] | None:
    """Box around what stands on the ground (model frame, y up), for framing the preview.

    A wide ground patch would otherwise make the subject a speck in the thumbnail. ``None`` when
    nothing rises clearly above the ground.
    """
    points = sample_surface(vertices, faces, 20_000, np.random.default_rng(0))
    height = np.percentile(points[:, 1], 99)  # robust to a few spikes
    above = points[points[:, 1] > 0.25 * height]  # clear of a wavy or noisy ground
    if len(above) < 100 or height <= 0:
        return None
    lo, hi = np.percentile(above, 1, axis=0), np.percentile(above, 99, axis=0)
    lo[1] = 0.0
    pad = margin * (hi - lo)  # room around the subject in the thumbnail
    return lo - pad, hi + pad
