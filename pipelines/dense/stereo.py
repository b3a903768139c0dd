"""Dense stage, part 2: one depth map per reference view by plane sweep with windowed ZNCC.

Coarse to fine, all vectorised with OpenCV and numpy:

1. **Coarse sweep** at half the working resolution: fronto-parallel planes sampled uniformly in
   inverse depth between the view's depth range; each source view is warped onto the reference
   by the plane's homography, compared by zero-mean normalised cross-correlation (ZNCC) over a
   square window, and the per-source scores are aggregated robustly (mean of the best ``k``, so
   a source that sees an occluder does not veto a good depth). Winner-take-all plus a parabola
   through the neighbouring planes' scores gives sub-plane inverse depth.
2. **Refinement** at the working resolution: around the upsampled coarse inverse depth, a few
   per-pixel hypotheses (warped with ``cv2.remap``) in two rounds of shrinking steps, each ending
   with the same parabola fit.

Scores are ZNCC in [-1, 1]; pixels whose best score is below ``min_ncc`` or whose window has
almost no texture get depth 0 (invalid). Poses are camera-from-world, intrinsics in the OpenCV
pixel convention, depth is camera z (see :mod:`pipelines.dense.views`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.progress import CancelToken

MIN_TEXTURE_STD = 0.004
"""Reference windows with a grey-level standard deviation below this (0..1 scale, ~1 level of 255)
cannot be matched; they get no depth."""
OUTSIDE = -1.0
"""Grey value marking pixels outside a source image (real grey values are in [0, 1])."""
FINE_ROUNDS = ((2, 0.5), (1, 0.2))
"""Refinement rounds: (hypotheses on each side, step as a fraction of the previous step)."""
COARSE_SUPPORT = 11
"""Side (px, coarse level) of the box over which each plane's aggregated ZNCC is averaged before
the winner is taken. Pooling many small-window scores resists wrong winners far better than one
big window (on the tabletop fixture: 62% -> 84% of pixels within one plane of the truth)."""
FINE_SUPPORT = 3
"""The same pooling at the refinement level (0 = none)."""


@dataclass(frozen=True)
class StereoImage:
    """A grey working image with its camera (the inputs of the sweep)."""

    gray: np.ndarray
    """float32 HxW in [0, 1]; pixels without content are :data:`OUTSIDE`."""
    K: np.ndarray
    """3x3 intrinsics, OpenCV pixel convention."""
    R: np.ndarray
    t: np.ndarray
    """Camera-from-world pose."""

    def downscaled(self) -> StereoImage:
        """The same view at half resolution (pixel-area averaging), intrinsics adjusted."""
        import cv2

        h, w = self.gray.shape
        w2, h2 = max(1, w // 2), max(1, h // 2)
        gray = cv2.resize(self.gray, (w2, h2), interpolation=cv2.INTER_AREA)
        gray[gray < 0] = OUTSIDE  # a half-outside block is outside
        return StereoImage(gray, scale_intrinsics(self.K, w2 / w, h2 / h), self.R, self.t)


@dataclass(frozen=True)
class SweepSettings:
    num_planes: int
    """Fronto-parallel planes of the coarse sweep."""
    window_radius: int
    """ZNCC window half-size at the working resolution (px); the window is 2r+1 square."""
    min_ncc: float
    """Pixels whose aggregated ZNCC stays below this get no depth."""
    plane_fit_radius: int = 0
    """Window half-size (px) of the local slanted-plane regression after the sweep (:mod:`pipelines.dense.planes`); 0 = none."""
    plane_fit_max_residual: float = 0.01
    """Largest RMS residual of a kept local plane, relative to inverse depth."""
    edge_trim_px: int = 0
    """Depth within this many px of a pixel without depth is dropped (:func:`pipelines.dense.planes.trim_edges`)."""


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of the same camera for an image resized by (sx, sy), OpenCV pixel convention."""
    out = K.copy()
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def _relative_pose(ref: StereoImage, src: StereoImage) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) mapping reference-camera coordinates to source-camera coordinates."""
    R = src.R @ ref.R.T
    return R, src.t - R @ ref.t


class _Zncc:
    """Windowed ZNCC of a fixed reference image against warped source images."""

    def __init__(self, ref_gray: np.ndarray, radius: int) -> None:
        import cv2

        self._cv2 = cv2
        self._ksize = (2 * radius + 1, 2 * radius + 1)
        self.ref = ref_gray
        self.mean = self._box(ref_gray)
        var = self._box(ref_gray * ref_gray) - self.mean * self.mean
        self.textured = (var > MIN_TEXTURE_STD**2) & (ref_gray >= 0)
        self.var = np.maximum(var, 1e-8)

    def _box(self, a: np.ndarray) -> np.ndarray:
        return self._cv2.boxFilter(a, -1, self._ksize, borderType=self._cv2.BORDER_REFLECT)

    def score(self, warped: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """ZNCC per pixel; -1 where the source sample is missing or flat."""
        ms = self._box(warped)
        var_s = self._box(warped * warped)
        var_s -= ms * ms
        cov = self._box(self.ref * warped)
        cov -= self.mean * ms
        np.maximum(var_s, 1e-8, out=var_s)
        var_s *= self.var
        np.sqrt(var_s, out=var_s)
        cov /= var_s
        cov[~valid] = -1.0
        return cov


class _TopK:
    """Running mean of the ``k`` largest of several score maps (robust multi-view aggregation)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.best: list[np.ndarray] = []

    def add(self, scores: np.ndarray) -> None:
        v = scores
        for i, b in enumerate(self.best):
            hi = np.maximum(b, v)
            v = np.minimum(b, v)
            self.best[i] = hi
        if len(self.best) < self.k:
            self.best.append(v)

    def mean(self) -> np.ndarray:
        total = self.best[0].copy()
        for b in self.best[1:]:
            total += b
        total /= len(self.best)
        return total


def _top_k(num_sources: int) -> int:
    """How many of the sources' scores count: about half, at least two where there are two."""
    return min(num_sources, max(2, num_sources // 2))


def _parabola_offset(prev: np.ndarray, best: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Sub-sample offset in [-0.5, 0.5] of the maximum of a parabola through three scores."""
    curvature = prev - 2.0 * best + nxt
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = 0.5 * (prev - nxt) / curvature
    return np.where(curvature < -1e-6, np.clip(offset, -0.5, 0.5), 0.0).astype(np.float32)


def _winner(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of the best hypothesis, sub-sample offset, best score) per pixel of a (D, H, W) volume."""
    d = volume.shape[0]
    best = np.argmax(volume, axis=0)
    score = np.take_along_axis(volume, best[None], 0)[0]
    prev = np.take_along_axis(volume, np.clip(best - 1, 0, d - 1)[None], 0)[0]
    nxt = np.take_along_axis(volume, np.clip(best + 1, 0, d - 1)[None], 0)[0]
    offset = _parabola_offset(prev, score, nxt)
    offset[(best == 0) | (best == d - 1)] = 0.0
    return best, offset, score


def _coarse_sweep(
    ref: StereoImage,
    sources: list[StereoImage],
    inv_depths: np.ndarray,
    radius: int,
    cancel: CancelToken,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Plane sweep; returns (inverse depth, score) maps at the resolution of ``ref``."""
    import cv2

    h, w = ref.gray.shape
    zncc = _Zncc(ref.gray, radius)
    K_inv = np.linalg.inv(ref.K)
    poses = [_relative_pose(ref, s) for s in sources]
    volume = np.empty((len(inv_depths), h, w), np.float32)
    e3 = np.array([0.0, 0.0, 1.0])
    k = _top_k(len(sources))
    for d, rho in enumerate(inv_depths):
        cancel.check()
        agg = _TopK(k)
        for src, (R, t) in zip(sources, poses, strict=True):
            # Points X on the plane z = 1/rho satisfy rho * e3.X = 1, so R X + t = (R + rho t e3^T) X.
            H = src.K @ (R + rho * np.outer(t, e3)) @ K_inv
            warped = cv2.warpPerspective(
                src.gray, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT, borderValue=OUTSIDE,
            )
            agg.add(zncc.score(warped, warped >= 0))
        volume[d] = cv2.boxFilter(agg.mean(), -1, (COARSE_SUPPORT, COARSE_SUPPORT), borderType=cv2.BORDER_REFLECT)
        report((d + 1) / len(inv_depths))
    best, offset, score = _winner(volume)
    step = float(inv_depths[1] - inv_depths[0]) if len(inv_depths) > 1 else 0.0
    inv = (inv_depths[best] + offset * step).astype(np.float32)
    # A winner on the first or last plane means the surface is probably outside the range (sky,
    # far background, something very close): no depth there.
    score[~zncc.textured | (best == 0) | (best == len(inv_depths) - 1)] = -1.0
    return inv, score


def _refine(
    ref: StereoImage,
    sources: list[StereoImage],
    inv: np.ndarray,
    step: float,
    radius: int,
    cancel: CancelToken,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel hypothesis search around ``inv`` (inverse depth at the resolution of ``ref``)."""
    import cv2

    h, w = ref.gray.shape
    zncc = _Zncc(ref.gray, radius)
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(ref.K).T.astype(np.float32)
    # For a reference pixel with inverse depth rho, its source pixel is (A + rho b) up to scale.
    warps = []
    for src in sources:
        R, t = _relative_pose(ref, src)
        A = rays @ (src.K @ R).T.astype(np.float32)
        warps.append((src, np.ascontiguousarray(np.moveaxis(A, -1, 0)), (src.K @ t).astype(np.float32)))
    k = _top_k(len(sources))
    score = np.full((h, w), -1.0, np.float32)
    total = sum(2 * n + 1 for n, _ in FINE_ROUNDS)
    done = 0
    for n, shrink in FINE_ROUNDS:
        step *= shrink
        offsets = np.arange(-n, n + 1, dtype=np.float32) * step
        volume = np.empty((len(offsets), h, w), np.float32)
        for i, off in enumerate(offsets):
            cancel.check()
            rho = inv + off
            agg = _TopK(k)
            for src, A, b in warps:
                den = A[2] + rho * b[2]
                mx = (A[0] + rho * b[0]) / den
                my = (A[1] + rho * b[1]) / den
                warped = cv2.remap(src.gray, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=OUTSIDE)
                agg.add(zncc.score(warped, (warped >= 0) & (den > 0)))
            volume[i] = agg.mean()
            if FINE_SUPPORT:
                volume[i] = cv2.boxFilter(volume[i], -1, (FINE_SUPPORT, FINE_SUPPORT), borderType=cv2.BORDER_REFLECT)
            done += 1
            report(done / total)
        best, offset, score = _winner(volume)
        inv = inv + offsets[best] + offset * step
    score[~zncc.textured] = -1.0
    return inv, score


def estimate_depth(
    ref: StereoImage,
    sources: list[StereoImage],
    depth_min: float,
    depth_max: float,
    settings: SweepSettings,
    cancel: CancelToken,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Depth map (camera z, model units; 0 = no depth) and its ZNCC score map for ``ref``.

    ``report(f)`` receives the fraction of this view's work done (0..1), several times a second.
    """
    import cv2

    if not sources:
        raise ValueError("estimate_depth needs at least one source view")
    h, w = ref.gray.shape
    coarse_ref = ref.downscaled()
    coarse_sources = [s.downscaled() for s in sources]
    inv_depths = np.linspace(1.0 / depth_max, 1.0 / depth_min, settings.num_planes)
    coarse_radius = max(2, (settings.window_radius + 1) // 2)
    inv, coarse_score = _coarse_sweep(coarse_ref, coarse_sources, inv_depths, coarse_radius, cancel, lambda f: report(0.7 * f))
    in_range = cv2.resize((coarse_score > -1.0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    inv = cv2.medianBlur(inv, 5)  # removes isolated winner-take-all mistakes before upsampling
    inv = cv2.resize(inv, (w, h), interpolation=cv2.INTER_LINEAR)
    step = float(inv_depths[1] - inv_depths[0]) if len(inv_depths) > 1 else float(inv_depths[0]) * 0.05
    inv, score = _refine(ref, sources, inv, step, settings.window_radius, cancel, lambda f: report(0.7 + 0.3 * f))
    valid = in_range & (score >= settings.min_ncc) & (inv > inv_depths[0]) & (inv < inv_depths[-1])
    depth = np.zeros((h, w), np.float32)
    depth[valid] = 1.0 / inv[valid]
    return depth, score
