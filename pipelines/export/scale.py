"""Real-world scale of the deliverables: metres from the request, from GPS EXIF, or a normalised size.

SfM units are arbitrary, so without this a castle and a teacup arrive at the same size in AR. In
order of trust:

* ``request``: the app sends ``real_size_m``, the object's longest side (the user measured or
  knows it). It is matched to the longest side of what stands on the ground when a ground plane
  was found, else of the whole model's box.
* ``gps``: at least ``MIN_GPS_PHOTOS`` registered photos carry GPS positions spread over at least
  ``MIN_GPS_SPREAD_M``. A similarity from the camera centres to the positions (Earth-centred
  metres; RANSAC, so a few bad fixes do not matter) gives the scale, accepted when the positions
  it explains fit within ``MAX_GPS_RESIDUAL_SHARE`` of their spread.
* ``normalised``: nothing says how big the object is; the unit is recorded as arbitrary and the
  model is scaled so its longest side is ``NORMALISED_SIZE_M`` (an object on a table), instead
  of arriving in SfM units that may make it a speck or a mountain.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.geometry import ecef_from_geodetic, robust_similarity
from pipelines.views import ColmapView

logger = logging.getLogger(__name__)

NORMALISED_SIZE_M = 0.5
"""Longest side of a model whose real size is unknown (metres)."""
MIN_GPS_PHOTOS = 4
MIN_GPS_SPREAD_M = 5.0
"""Phone GPS is good to a few metres: positions closer together than this say nothing about scale."""
MAX_GPS_RESIDUAL_SHARE = 0.25
"""GPS positions must fit the camera centres within this share of their RMS distance from their mean."""
GPS_INLIER_M = 3.0
"""A GPS fix farther than this (or 20 % of the spread, if more) from the fitted camera centre is an outlier."""


@dataclass(frozen=True)
class Scale:
    """How many metres one SfM unit is, and why this service believes it."""

    source: str
    """``"request"`` | ``"gps"`` | ``"normalised"``."""
    metres_per_unit: float
    metric: bool
    """True when the size is the real one (request or GPS); False for ``normalised`` (arbitrary unit)."""
    detail: str
    """One line for a person: what decided, and what was not used and why."""
    gps_photos: int = 0
    """Registered photos with a GPS position."""
    gps_spread_m: float | None = None
    """Largest distance between two of those positions (metres)."""
    gps_residual_m: float | None = None
    """RMS distance between the GPS positions and the fitted camera centres (metres)."""

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "metres_per_unit": self.metres_per_unit,
            "metric": self.metric,
            "detail": self.detail,
            "gps_photos": self.gps_photos,
            "gps_spread_m": None if self.gps_spread_m is None else round(self.gps_spread_m, 3),
            "gps_residual_m": None if self.gps_residual_m is None else round(self.gps_residual_m, 3),
        }


def metric_scale(longest_side: float, measured: str, views: list[ColmapView], gps: Mapping[str, tuple[float, float, float]], real_size_m: float) -> Scale:
    """The scale of a model whose measured extent (SfM units) is ``longest_side``.

    ``measured`` names what that extent is ("the subject above the ground", "the whole model");
    ``gps`` maps image names to (latitude deg, longitude deg, altitude m); ``real_size_m`` > 0 is
    the request's size in metres and wins.
    """
    if longest_side <= 0 or not np.isfinite(longest_side):
        return Scale("normalised", 1.0, False, "the model has no extent; SfM units kept")
    from_gps = _gps_scale(views, gps)
    if real_size_m > 0:
        note = f"; GPS would give {from_gps.metres_per_unit * longest_side:.3g} m" if from_gps.metric else ""
        return _with_gps(Scale("request", real_size_m / longest_side, True, f"real_size_m = {real_size_m:g} m is the longest side of {measured}{note}"), from_gps)
    if from_gps.metric:
        return from_gps
    factor = NORMALISED_SIZE_M / longest_side
    return _with_gps(Scale("normalised", factor, False, f"unit arbitrary: {measured} scaled to {NORMALISED_SIZE_M:g} m longest side ({from_gps.detail})"), from_gps)


def _with_gps(scale: Scale, gps: Scale) -> Scale:
    return Scale(scale.source, scale.metres_per_unit, scale.metric, scale.detail, gps.gps_photos, gps.gps_spread_m, gps.gps_residual_m)


def _gps_scale(views: list[ColmapView], gps: Mapping[str, tuple[float, float, float]]) -> Scale:
    """Scale from GPS EXIF, or a non-metric :class:`Scale` whose detail says why GPS was not used."""
    located = [v for v in views if v.name in gps]
    if len(located) < MIN_GPS_PHOTOS:
        return Scale("normalised", 1.0, False, f"{len(located)} registered photos have GPS positions, {MIN_GPS_PHOTOS} are needed")
    positions = ecef_from_geodetic(np.array([gps[v.name] for v in located], dtype=np.float64))
    positions -= positions.mean(axis=0)  # metres around the photos' centre: keeps the fit well conditioned
    centres = np.array([v.center for v in located])
    spread = float(np.max(np.linalg.norm(positions[:, None] - positions[None], axis=2)))
    if spread < MIN_GPS_SPREAD_M:
        return Scale("normalised", 1.0, False, f"GPS positions of {len(located)} photos span {spread:.1f} m, under {MIN_GPS_SPREAD_M:g} m", len(located), spread)
    if float(np.max(np.linalg.norm(centres - centres.mean(axis=0), axis=1))) <= 0:
        return Scale("normalised", 1.0, False, "the camera centres coincide", len(located), spread)
    m, inliers = robust_similarity(centres, positions, max(GPS_INLIER_M, 0.2 * spread))
    factor = float(np.cbrt(abs(np.linalg.det(m[:3, :3]))))
    fitted = centres @ m[:3, :3].T + m[:3, 3]
    residual = float(np.sqrt(np.mean(np.sum((fitted[inliers] - positions[inliers]) ** 2, axis=1))))
    radius = float(np.sqrt(np.mean(np.sum((positions[inliers] - positions[inliers].mean(axis=0)) ** 2, axis=1))))
    if inliers.sum() < MIN_GPS_PHOTOS or residual > MAX_GPS_RESIDUAL_SHARE * radius:
        return Scale("normalised", 1.0, False, f"GPS positions do not fit the camera centres (RMS {residual:.1f} m over a spread of {spread:.1f} m)",
                     len(located), spread, residual)  # fmt: skip
    logger.info("scale from GPS: %d photos (%d fit), %.1f m spread, RMS %.2f m: %.4g m per unit", len(located), inliers.sum(), spread, residual, factor)
    return Scale("gps", factor, True, f"GPS EXIF of {int(inliers.sum())} of {len(located)} photos over {spread:.1f} m (RMS {residual:.2f} m)", len(located), spread, residual)
