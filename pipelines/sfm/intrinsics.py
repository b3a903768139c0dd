"""Refining each camera's principal point after mapping, where the photos can pin it down.

COLMAP's mapper holds the principal point at the image centre (refining it during incremental
mapping is ill-posed while few photos are placed). A real lens sits 10-20 px off-centre on a
phone sensor, and holding it fixed turns every camera by the same few tenths of a degree. Once the
model is complete, one more bundle adjustment may free the principal point of a camera that is
shared by enough photos whose observations cover the image; the result is kept only if it lowers
the reprojection error by :data:`MIN_ERROR_DROP` and stays plausible (the principal point within ``MAX_SHIFT_FRACTION`` of
the image size from the centre, the focal length within ``MAX_FOCAL_CHANGE``), else the model is
left as it was. ``report.json`` says which, per camera, and why.

Units: pixels of the working image (COLMAP convention, pixel centres at +0.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.options import SfmOptions

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)

GRID = (8, 6)
"""Cells across and down the image over which observation coverage is counted."""
MAX_SHIFT_FRACTION = 0.05
"""A refined principal point further than this fraction of the image size from the centre is refused as diverged."""
MAX_FOCAL_CHANGE = 0.05
"""Relative focal-length change above which the refinement is refused (it traded focal for principal point)."""
MIN_ERROR_DROP = 0.02
"""Relative drop of the mean reprojection error the refinement must bring: a principal point that
explains almost nothing is not determined by the photos (e.g. a facade seen from the front), and
freeing it would only trade it against the rotations."""
MIN_COVERAGE = 0.6
"""Fraction of the :data:`GRID` cells that must hold observations, over all of a camera's photos."""


@dataclass
class CameraIntrinsics:
    """What was decided for one camera, for ``report.json``."""

    camera_id: int
    model: str
    photos: int
    coverage: float
    principal_point_refined: bool
    reason: str
    params_before: list[float]
    params_after: list[float]
    principal_shift_px: float = 0.0
    """Distance of the final principal point from the image centre (px)."""

    def summary(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "model": self.model,
            "photos": self.photos,
            "coverage": round(self.coverage, 3),
            "principal_point_refined": self.principal_point_refined,
            "reason": self.reason,
            "params_before": [round(p, 6) for p in self.params_before],
            "params_after": [round(p, 6) for p in self.params_after],
            "principal_point_offset_px": round(self.principal_shift_px, 3),
        }


@dataclass
class IntrinsicsResult:
    cameras: list[CameraIntrinsics] = field(default_factory=list)
    reprojection_error_before_px: float = 0.0
    reprojection_error_after_px: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "cameras": [c.summary() for c in self.cameras],
            "reprojection_error_before_px": round(self.reprojection_error_before_px, 4),
            "reprojection_error_after_px": round(self.reprojection_error_after_px, 4),
        }


def coverage(rec: pycolmap.Reconstruction, camera_id: int) -> tuple[int, float]:
    """(photos, fraction of :data:`GRID` cells holding a triangulated observation) of one camera."""
    camera = rec.cameras[camera_id]
    cells = np.zeros(GRID[0] * GRID[1], dtype=bool)
    photos = 0
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        if image.camera_id != camera_id:
            continue
        photos += 1
        xy = np.array([p.xy for p in image.points2D if p.has_point3D()], dtype=np.float64).reshape(-1, 2)
        if len(xy):
            cx = np.clip((xy[:, 0] / camera.width * GRID[0]).astype(int), 0, GRID[0] - 1)
            cy = np.clip((xy[:, 1] / camera.height * GRID[1]).astype(int), 0, GRID[1] - 1)
            cells[cy * GRID[0] + cx] = True
    return photos, float(cells.mean())


def _offset(camera: pycolmap.Camera) -> float:
    return float(np.hypot(camera.principal_point_x - camera.width / 2, camera.principal_point_y - camera.height / 2))


def refine_intrinsics(rec: pycolmap.Reconstruction, options: SfmOptions) -> tuple[pycolmap.Reconstruction, IntrinsicsResult]:
    """The model with the principal points refined where the data supports it, and what was done.

    Returns ``rec`` itself when nothing is refined, otherwise a refined copy that passed the checks.
    """
    import pycolmap

    before = float(rec.compute_mean_reprojection_error())
    result = IntrinsicsResult(reprojection_error_before_px=before, reprojection_error_after_px=before)
    eligible: list[int] = []
    for camera_id, camera in sorted(rec.cameras.items()):
        photos, cov = coverage(rec, camera_id)
        if not options.refine_principal_point:
            reason = "principal point refinement is off (sfm.refine_principal_point)"
        elif photos < options.principal_point_min_photos:
            reason = f"kept at the image centre: {photos} photos of this camera, {options.principal_point_min_photos} needed"
        elif cov < MIN_COVERAGE:
            reason = f"kept at the image centre: observations cover {cov:.0%} of the image, {MIN_COVERAGE:.0%} needed"
        else:
            reason = ""
            eligible.append(camera_id)
        params = [float(p) for p in camera.params]
        result.cameras.append(CameraIntrinsics(camera_id, camera.model_name, photos, cov, False, reason, params, params, _offset(camera)))
    if not eligible:
        return rec, result

    refined = pycolmap.Reconstruction(rec)
    ba = pycolmap.BundleAdjustmentOptions()
    ba.refine_principal_point = True
    ba.refine_focal_length = True
    ba.refine_extra_params = True
    pycolmap.bundle_adjustment(refined, ba)
    after = float(refined.compute_mean_reprojection_error())
    problems = []
    if not after < before * (1 - MIN_ERROR_DROP):
        problems.append(f"reprojection error dropped only from {before:.4f} to {after:.4f} px ({1 - after / before:.1%}, {MIN_ERROR_DROP:.0%} needed)")
    for camera_id in eligible:
        old, new = rec.cameras[camera_id], refined.cameras[camera_id]
        if _offset(new) > MAX_SHIFT_FRACTION * max(new.width, new.height):
            problems.append(f"camera {camera_id}'s principal point diverged to {_offset(new):.1f} px from the centre")
        if abs(new.mean_focal_length() / old.mean_focal_length() - 1) > MAX_FOCAL_CHANGE:
            problems.append(f"camera {camera_id}'s focal length moved by {abs(new.mean_focal_length() / old.mean_focal_length() - 1):.1%}")
    if problems:
        logger.warning("principal point refinement refused: %s", "; ".join(problems))
        for cam in result.cameras:
            if cam.camera_id in eligible:
                cam.reason = "kept at the image centre: refinement refused, " + "; ".join(problems)
        return rec, result

    result.reprojection_error_after_px = after
    for cam in result.cameras:
        new = refined.cameras[cam.camera_id]
        cam.params_after = [float(p) for p in new.params]
        cam.principal_shift_px = _offset(new)
        if cam.camera_id in eligible:
            cam.principal_point_refined = True
            cam.reason = f"refined: {cam.photos} photos covering {cam.coverage:.0%} of the image; reprojection error {before:.4f} -> {after:.4f} px"
    logger.info("principal points refined; mean reprojection error %.4f -> %.4f px", before, after)
    return refined, result
