"""Dense stage, part 2b: local slanted-plane regression of each depth map, keeping depth edges; edge trimming.

A plane-sweep depth map of a weakly textured or slanted surface is a plane plus noise: every
pixel's winner is picked alone, from a fronto-parallel window. In a pinhole camera a plane's
*inverse* depth is an affine function of the pixel coordinates, ``1/z = a u + b v + c``, so around
each pixel a least-squares plane is fitted to the valid inverse depths of a ``(2r+1)²`` window (a
slanted plane per pixel, with its own normal) and the pixel takes the plane's value at its centre.
The fit is kept only where it explains the window: enough valid pixels (:data:`MIN_SUPPORT`) and
an RMS residual within ``max_residual`` of the inverse depth. A window straddling a depth edge
(an object in front of the wall) fits badly and keeps its original depths, so edges stay sharp;
a pixel far off a good plane (a wrong winner) is dropped rather than smoothed toward it.

:func:`trim_edges` then drops the depth next to pixels without depth: a matching window that
straddles a silhouette carries the nearer surface into the background (a roof line "fattened" into
the sky, which every photo then sees against the same sky and textures sky-blue).

All window sums are box filters (OpenCV), so the cost is a few dozen passes over the image.
Depth is camera z in model units, 0 = invalid (as :func:`pipelines.dense.stereo.estimate_depth` gives).
"""

from __future__ import annotations

import numpy as np

MIN_SUPPORT = 0.6
"""Fraction of the window that must hold valid depth for a plane to be fitted."""
OUTLIER_SIGMAS = 3.0
"""A pixel further than this many residual RMS from its window's plane is taken for a wrong winner and dropped."""


def fit_local_planes(depth: np.ndarray, radius: int, max_residual: float) -> tuple[np.ndarray, dict[str, int]]:
    """The depth map with each pixel replaced by its window's plane where that plane fits (see module doc).

    ``radius``: half-size of the window (px); ``max_residual``: the largest RMS residual of a
    kept fit, relative to the inverse depth (0.01 = 1 %). Returns the new depth map (float32) and
    counts: ``fitted`` (pixels given their plane's depth), ``kept`` (left as they were), ``dropped``.
    """
    import cv2

    z = np.asarray(depth, dtype=np.float64)
    valid = z > 0
    if radius <= 0 or not valid.any():
        return depth.astype(np.float32), {"fitted": 0, "kept": int(valid.sum()), "dropped": 0}
    h, w = z.shape
    d = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    m = valid.astype(np.float64)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    size = (2 * radius + 1, 2 * radius + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, cv2.CV_64F, size, normalize=False, borderType=cv2.BORDER_CONSTANT)

    # Window sums of the valid pixels' coordinates and inverse depths, then centred on each pixel
    # (coordinates relative to the window's own centre keep the 3x3 systems well conditioned).
    s1, su, sv = box(m), box(m * u), box(m * v)
    suu, suv, svv = box(m * u * u), box(m * u * v), box(m * v * v)
    sd, sud, svd, sdd = box(d), box(d * u), box(d * v), box(d * d)
    cu, cv_ = su - u * s1, sv - v * s1
    cuu = suu - 2 * u * su + u * u * s1
    cuv = suv - u * sv - v * su + u * v * s1
    cvv = svv - 2 * v * sv + v * v * s1
    cud, cvd = sud - u * sd, svd - v * sd

    ok = valid & (s1 >= MIN_SUPPORT * size[0] * size[1])
    idx = np.flatnonzero(ok)
    a = np.empty((len(idx), 3, 3))
    a[:, 0, 0], a[:, 0, 1], a[:, 0, 2] = cuu.flat[idx], cuv.flat[idx], cu.flat[idx]
    a[:, 1, 0], a[:, 1, 1], a[:, 1, 2] = cuv.flat[idx], cvv.flat[idx], cv_.flat[idx]
    a[:, 2, 0], a[:, 2, 1], a[:, 2, 2] = cu.flat[idx], cv_.flat[idx], s1.flat[idx]
    b = np.stack([cud.flat[idx], cvd.flat[idx], sd.flat[idx]], axis=1)
    solvable = np.abs(np.linalg.det(a)) > 1e-9 * np.maximum(s1.flat[idx], 1.0) ** 3
    theta = np.zeros_like(b)
    theta[solvable] = np.linalg.solve(a[solvable], b[solvable][:, :, None])[:, :, 0]
    rms = np.sqrt(np.maximum(sdd.flat[idx] - np.einsum("ij,ij->i", theta, b), 0.0) / s1.flat[idx])
    centre = theta[:, 2]  # the plane at the window's centre: the pixel itself
    good = solvable & (centre > 0) & (rms <= max_residual * centre)
    wrong = good & (np.abs(d.flat[idx] - centre) > OUTLIER_SIGMAS * np.maximum(rms, 1e-3 * max_residual * centre))

    out = z.copy()
    fit = idx[good & ~wrong]
    out.flat[fit] = 1.0 / centre[good & ~wrong]
    out.flat[idx[wrong]] = 0.0
    counts = {"fitted": len(fit), "kept": int(valid.sum()) - len(fit) - int(wrong.sum()), "dropped": int(wrong.sum())}
    return out.astype(np.float32), counts


def trim_edges(depth: np.ndarray, px: int) -> np.ndarray:
    """``depth`` with every pixel within ``px`` (Chebyshev distance) of a pixel without depth set to 0."""
    import cv2

    if px <= 0:
        return depth
    inside = cv2.erode((depth > 0).astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return np.where(inside.astype(bool), depth, 0.0).astype(np.float32)
