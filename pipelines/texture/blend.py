"""Pixel-level helpers of the texture stage: sampling photos, evening out their exposure, and
filling the atlas outside the charts.

Pixel coordinates follow COLMAP (the centre of the top-left pixel is (0.5, 0.5)); colours are
RGB in 0..1 unless a function says uint8.
"""

from __future__ import annotations

import numpy as np

from pipelines.views import ColmapView

IMAGE_MARGIN = 2.0
"""Pixels at the image border (px) are not sampled (demosaicing and lens artefacts)."""
MAX_GAIN = 2.0
"""Exposure compensation never brightens or darkens a photo by more than this factor."""
GAIN_PRIOR = 1.0
"""Pull of each photo's log-gain towards 0 (relative to one pair seen on one face)."""
MIN_PAIR_SAMPLES = 20
"""Two photos must share this many faces before their brightness ratio is trusted."""


def sample_photo(image: np.ndarray, view: ColmapView, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear RGB (N, 3) of the image at the projections of world points (N, 3), and validity."""
    import cv2

    uv, depth = view.project(points)
    ok = view.in_image(uv, IMAGE_MARGIN) & (depth > 0)
    uv = np.where(ok[:, None], uv, 0.0) - 0.5  # COLMAP pixel centres are at +0.5
    n = len(uv)
    cols = 4096
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, dtype=np.float32)
    my = np.zeros(rows * cols, dtype=np.float32)
    mx[:n], my[:n] = uv[:, 0], uv[:, 1]
    out = cv2.remap(image, mx.reshape(rows, cols), my.reshape(rows, cols), interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 3)[:n].astype(np.float32) / 255.0, ok


def exposure_gains(vertices: np.ndarray, faces: np.ndarray, candidates: np.ndarray, views: list[ColmapView], images: list[np.ndarray]) -> np.ndarray:
    """Per-view RGB gains (views, 3) that make overlapping photos agree (auto exposure, white balance).

    Wherever a face is coloured by two photos, the ratio of their colours at its centroid says
    how much brighter one is. The median log-ratio of each pair of photos is one equation
    ``log g_a - log g_b = log(I_b / I_a)``; a weak pull of every log-gain to 0 leaves photos that
    share no face alone, and the median photo keeps gain 1. Gains stay within ``MAX_GAIN``.
    """
    gains = np.ones((len(views), 3), dtype=np.float32)
    if candidates.shape[1] < 2:
        return gains
    both = np.flatnonzero(candidates[:, 1] >= 0)
    if len(views) < 2 or len(both) == 0:
        return gains
    centroid = vertices[faces[both]].mean(axis=1)
    colour = np.zeros((2, len(both), 3), dtype=np.float32)
    valid = np.zeros((2, len(both)), dtype=bool)
    for slot in range(2):
        cam = candidates[both, slot]
        for vi in np.unique(cam):
            sel = np.flatnonzero(cam == vi)
            colour[slot, sel], valid[slot, sel] = sample_photo(images[vi], views[vi], centroid[sel])
    ok = valid.all(axis=0) & np.all(colour > 0.04, axis=(0, 2)) & np.all(colour < 0.96, axis=(0, 2))  # no clipped pixels
    a, b = candidates[both[ok], 0], candidates[both[ok], 1]
    log_ratio = np.log(colour[1, ok]) - np.log(colour[0, ok])  # log(I_b / I_a), (P, 3)
    pair = a * len(views) + b
    keys, inverse, count = np.unique(pair, return_inverse=True, return_counts=True)
    keep = count >= MIN_PAIR_SAMPLES
    if not keep.any():
        return gains
    system = np.eye(len(views)) * GAIN_PRIOR
    rhs = np.zeros((len(views), 3))
    for k in np.flatnonzero(keep):
        va, vb = divmod(int(keys[k]), len(views))
        r = np.median(log_ratio[inverse == k], axis=0)
        w = np.sqrt(count[k])
        system[va, va] += w
        system[vb, vb] += w
        system[va, vb] -= w
        system[vb, va] -= w
        rhs[va] += w * r
        rhs[vb] -= w * r
    log_gain = np.linalg.solve(system, rhs)
    log_gain -= np.median(log_gain, axis=0)  # the typical photo keeps its brightness
    return np.exp(np.clip(log_gain, -np.log(MAX_GAIN), np.log(MAX_GAIN))).astype(np.float32)


def push_pull_fill(image: np.ndarray, known: np.ndarray) -> None:
    """Fill the unknown texels of ``image`` (H, W, 3 uint8, in place) with a smooth extension of
    the known ones: pull (average down a pyramid), push (fill each level's holes from the next
    coarser one). Chart borders then continue their own colours, so bilinear and mip-mapped
    lookups never mix in black. Works in uint8 at full size to keep 8192^2 atlases in memory.
    """
    import cv2

    h, w = known.shape
    premultiplied = image * known[..., None].astype(np.uint8)
    half = ((w + 1) // 2, (h + 1) // 2)
    colour = cv2.resize(premultiplied, half, interpolation=cv2.INTER_AREA).astype(np.float32)
    del premultiplied
    weight = cv2.resize(known.astype(np.uint8) * 255, half, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    levels = [(colour, weight)]
    while min(levels[-1][1].shape) > 1:
        c, wt = levels[-1]
        size = ((c.shape[1] + 1) // 2, (c.shape[0] + 1) // 2)
        levels.append((cv2.resize(c, size, interpolation=cv2.INTER_AREA), cv2.resize(wt, size, interpolation=cv2.INTER_AREA)))
    filled = levels[-1][0] / np.maximum(levels[-1][1], 1e-12)[..., None]
    while levels:
        c, wt = levels.pop()
        up = cv2.resize(filled, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
        # filled = mean * a + up * (1 - a) with a = known share, computed in place in ``c``
        np.divide(c, np.maximum(wt, 1e-12)[..., None], out=c)
        c -= up
        c *= np.clip(wt, 0.0, 1.0)[..., None]
        c += up
        filled = c
    up = cv2.resize(np.clip(filled + 0.5, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    np.copyto(image, up, where=~known[..., None])


def fill_from_neighbours(faces: np.ndarray, num_vertices: int, face_colour: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex colours (V, 3) for the faces no photo sees, taken from the seen surface around them.

    Vertices of seen faces (``face_colour`` (F, 3) not NaN) get the mean colour of those faces; the
    rest get, ring by ring across mesh edges, the mean of their already coloured neighbours, so a
    hidden patch continues the colours at its border. Vertices that no seen face reaches (a piece
    of mesh no photo sees at all) keep ``fallback`` (V, 3). Also returns which vertices got a photo's colour (V,).
    """
    seen = ~np.isnan(face_colour[:, 0])
    total = np.zeros((num_vertices, 3))
    count = np.zeros(num_vertices)
    for k in range(3):
        np.add.at(total, faces[seen, k], face_colour[seen])
        count += np.bincount(faces[seen, k], minlength=num_vertices)
    known = count > 0
    colour = np.where(known[:, None], total / np.maximum(count, 1)[:, None], fallback)
    front = known.copy()  # the vertices coloured last; only their faces' edges can carry colour further
    while True:
        ring = faces[front[faces].any(axis=1)]
        edges = np.concatenate([ring[:, [0, 1]], ring[:, [1, 2]], ring[:, [2, 0]]])
        edges = edges[known[edges[:, 0]] != known[edges[:, 1]]]
        if len(edges) == 0:
            return colour, known
        # orient each edge from its coloured end to its uncoloured end, then average per uncoloured vertex
        src = np.where(known[edges[:, 0]], edges[:, 0], edges[:, 1])
        dst = np.where(known[edges[:, 0]], edges[:, 1], edges[:, 0])
        n = np.bincount(dst, minlength=num_vertices)
        front = n > 0
        colour[front] = np.stack([np.bincount(dst, colour[src, c], minlength=num_vertices)[front] for c in range(3)], axis=1) / n[front, None]
        known |= front
