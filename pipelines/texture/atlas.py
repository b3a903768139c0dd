"""A fast UV atlas for scanned meshes: orthographic charts by normal direction, shelf-packed.

Open3D's UVAtlas and xatlas take 70-220 s on the 200k-face meshes of a balanced job on 2 CPU cores
(``python -m bench.atlas``, 2026-12-01; the atlas here takes 6-8 s, most of it the fold check and the layout) and UVAtlas
may refuse meshes with non-manifold vertices (Open3D documents it as requiring manifold input);
UVAtlas's seams are 2-3x shorter, which is what this atlas gives up. Scanned surfaces are
mostly gently curved, so a simpler scheme does: every face is labelled with the one of six axis
directions closest to its normal smoothed over its neighbourhood (a scan's noisy normals would
otherwise interleave labels), labels are smoothed and charts under ``MIN_CHART_FACES`` handed to
larger neighbours (on real meshes this halved the seams), and each connected group of same-label
faces becomes a chart projected orthographically on the plane of its axis (normals mostly within
~55 deg of the axis, never beyond ~84 deg, so the projection does not fold locally), turned to its
principal axes and packed on shelves of the square atlas at one texel size.
A chart can still fold over itself as a whole (a head in front of the wall it hangs on, joined through
the neck, both facing the axis): ray casting the packed atlas finds texels two of its faces share, and
the chart is cut between the two layers (``SPLIT_ROUNDS``).

Texel coordinates: x to the right and y down from the atlas' top-left corner, in texels, so texel
(row r, column c) covers [c, c + 1] x [r, r + 1]. :meth:`Atlas.uv_gl` gives the OpenGL/trimesh
convention (v up) used in files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.geometry import face_neighbours

if TYPE_CHECKING:
    from scipy.sparse import coo_matrix

AXES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
MIN_AXIS_COSINE = 0.25
"""Label smoothing never gives a face an axis more than ~75 deg from its normal."""
SMOOTHING_ROUNDS = 3
NORMAL_SMOOTHING_ROUNDS = 20
"""Rounds of averaging face normals with their neighbours before labelling (about 20 faces across): on a
noisy scan, labels by raw normals interleave wherever the surface faces between two axes."""
MIN_CHART_FACES = 100
"""Charts smaller than this give their faces to larger neighbouring charts where the axis allows."""
ABSORB_MIN_COSINE = 0.1
"""A face of a small chart may join a neighbour's chart up to ~84 deg from its axis (stretch up to 10 across
that one direction; on the benchmark's real meshes 0.9-1.8 % of the faces end up beyond ~75 deg)."""
ABSORB_ROUNDS = 12
"""Each round moves the faces next to larger charts; on the fox mesh the twelfth moved 24 faces against 3 243 in the first."""
SPLIT_ROUNDS = 4
"""Rounds of splitting charts that overlap themselves (each round one cut per overlapping chart)."""
PACK_TOLERANCE = 0.01
"""The packed texel size is within 1 % of the smallest that fits."""
ROUGH_PACK_TOLERANCE = 0.1
"""Packing while charts are still being split only has to keep them apart."""
MIN_LAYER_GAP_TEXELS = 3.0
"""Overlapping faces closer than this along the axis (texels) are left alone: their colours hardly differ."""
OVERLAP_STEP = 2
"""Texel spacing of the overlap check (2: overlaps narrower than about 2 texels may go unseen)."""
GROW_RINGS = 4
"""Rings of faces beyond a cut that move with the folded-over faces found by the check."""
MIN_OVERLAP_SAMPLES = 16
"""A chart is cut only where it overlaps itself at this many check points (about 64 texels): cutting a
slanted chart for a few folded faces would slice it along the contour of the cut."""


@dataclass(frozen=True)
class Atlas:
    """Per-corner UVs as a vertex-split mesh: atlas vertex ``i`` is mesh vertex ``source[i]``."""

    source: np.ndarray
    """(A,) index of the mesh vertex each atlas vertex copies."""
    faces: np.ndarray
    """(F, 3) faces in atlas-vertex indices (same face order as the mesh)."""
    texel_xy: np.ndarray
    """(A, 2) position in the atlas in texels (x right, y down)."""
    face_chart: np.ndarray
    """(F,) chart of each face."""
    size: int
    """Side of the square atlas (texels)."""
    num_charts: int
    texel_size: float
    """Surface length of one texel, in model units (charts are scaled alike)."""
    fill: float
    """Fraction of the atlas covered by chart rectangles."""

    def uv_gl(self) -> np.ndarray:
        """(A, 2) UVs in 0..1 with v pointing up (OpenGL, trimesh; glTF flips v on export)."""
        return np.stack([self.texel_xy[:, 0] / self.size, 1.0 - self.texel_xy[:, 1] / self.size], axis=1)


def build_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int) -> Atlas:
    """Charts and packing for the mesh (``vertices`` (V, 3), ``faces`` (F, 3)) in a ``size``^2 atlas.

    ``padding`` texels are kept free around every chart for dilation, so bilinear and mip-mapped
    lookups near chart borders do not pick up other charts' colours.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
    neighbours = face_neighbours(faces, len(vertices))
    label = _labels(normals, neighbours)
    depth = np.einsum("ij,ij->i", vertices[faces].mean(axis=1), AXES[label])  # along each face's chart axis
    group = label.copy()
    check = np.ones(len(faces), dtype=bool)  # faces whose charts may overlap themselves
    for _ in range(SPLIT_ROUNDS):
        chart, num_charts = _charts(group, neighbours)
        atlas = _layout(vertices, faces, label, chart, num_charts, size, padding, ROUGH_PACK_TOLERANCE)
        cuts = _overlap_cuts(atlas, depth, np.unique(chart[check]))
        if not cuts:
            break
        check = np.isin(chart, list(cuts))  # only the pieces of cut charts can overlap in the next round
        # the folded-over faces beyond each cut, grown by a few rings across the faces beyond it, become
        # groups of their own (only those: a slanted floor with a few folds is not sliced along the cut)
        beyond = np.zeros(len(faces), dtype=bool)
        moving = np.zeros(len(faces), dtype=bool)
        for c, (threshold, seed) in cuts.items():
            beyond |= (chart == c) & (depth > threshold)
            moving[seed] = True
        for _ in range(GROW_RINGS):
            moving |= beyond & np.any(np.where(neighbours >= 0, moving[np.maximum(neighbours, 0)], False), axis=1)
        piece, _ = _charts(np.where(moving, chart, -1), neighbours)
        group[moving] = group.max() + 1 + piece[moving]
    else:
        chart, num_charts = _charts(group, neighbours)
    return _layout(vertices, faces, label, chart, num_charts, size, padding, PACK_TOLERANCE)


def _layout(vertices: np.ndarray, faces: np.ndarray, label: np.ndarray, chart: np.ndarray, num_charts: int, size: int, padding: int, tolerance: float) -> Atlas:
    """Project each chart on the plane of its axis, turn it to its principal axes and pack the atlas."""
    # Orthographic coordinates of every corner on its chart's plane, turned to principal axes.
    basis = np.array([_plane_basis(a) for a in AXES])  # (6, 2, 3)
    corner_chart = np.repeat(chart, 3)
    corner_label = np.repeat(label, 3)
    p = vertices[faces.reshape(-1)]
    xy = np.einsum("nij,nj->ni", basis[corner_label], p)
    xy = _to_principal_axes(xy, corner_chart, num_charts)
    lo = np.full((num_charts, 2), np.inf)
    hi = np.full((num_charts, 2), -np.inf)
    np.minimum.at(lo, corner_chart, xy)
    np.maximum.at(hi, corner_chart, xy)
    extent = hi - lo
    turn = extent[:, 1] > extent[:, 0]  # lay every chart flat: rows pack better
    extent[turn] = extent[turn][:, ::-1]
    local = xy - lo[corner_chart]
    local[turn[corner_chart]] = local[turn[corner_chart]][:, ::-1]

    texel_size, origin, fill = _pack(extent, size, padding, tolerance)
    texel_corner = local / texel_size + origin[corner_chart] + padding

    # Split vertices along chart borders: one atlas vertex per (mesh vertex, chart) pair.
    key = faces.reshape(-1) * num_charts + corner_chart
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return Atlas(
        source=faces.reshape(-1)[first],
        faces=inverse.reshape(-1, 3),
        texel_xy=texel_corner[first],
        face_chart=chart,
        size=size,
        num_charts=num_charts,
        texel_size=texel_size,
        fill=fill,
    )


def _overlap_cuts(atlas: Atlas, depth: np.ndarray, charts: np.ndarray) -> dict[int, tuple[float, np.ndarray]]:
    """Per chart whose projection overlaps itself, a depth (along its axis) that separates the overlapping
    faces, and the faces beyond it that overlap others.

    An orthographic chart folds over itself where the surface is no height field along the axis (a head
    in front of the wall it hangs on, joined through the neck): two faces then share texels and one shows
    the other's colours. Texel centres every ``OVERLAP_STEP`` texels inside the boxes of ``charts`` are ray
    cast through the flat atlas; where a ray meets two faces of one chart, the cut that lies between the
    most such pairs splits it.
    """
    import open3d as o3d

    # every face its own triangle at height = its depth in texels: coplanar triangles hit at one distance
    # may be reported once, and a ray must see both layers of a fold
    height = (depth - depth.min()) / atlas.texel_size
    corners = np.concatenate([atlas.texel_xy[atlas.faces], np.repeat(height[:, None, None], 3, axis=1)], axis=2)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(corners.reshape(-1, 3).astype(np.float32)), o3d.core.Tensor(np.arange(3 * len(depth), dtype=np.uint32).reshape(-1, 3)))
    if len(charts) == atlas.num_charts:
        grid = np.arange(OVERLAP_STEP / 2, atlas.size, OVERLAP_STEP, dtype=np.float32)
        xs, ys = (a.ravel() for a in np.meshgrid(grid, grid))
    else:  # the texel boxes of the given charts only
        flat = atlas.texel_xy[atlas.faces]  # (F, 3, 2)
        lo = np.full((atlas.num_charts, 2), np.inf)
        hi = np.full((atlas.num_charts, 2), -np.inf)
        np.minimum.at(lo, atlas.face_chart, flat.min(axis=1))
        np.maximum.at(hi, atlas.face_chart, flat.max(axis=1))
        boxes = [np.meshgrid(np.arange(lo[c, 0], hi[c, 0], OVERLAP_STEP), np.arange(lo[c, 1], hi[c, 1], OVERLAP_STEP)) for c in charts]
        xs = np.concatenate([b[0].ravel() for b in boxes]).astype(np.float32) + OVERLAP_STEP / 2
        ys = np.concatenate([b[1].ravel() for b in boxes]).astype(np.float32) + OVERLAP_STEP / 2
    rays = np.zeros((len(xs), 6), dtype=np.float32)
    rays[:, 0], rays[:, 1], rays[:, 2], rays[:, 5] = xs, ys, float(height.max()) + 1.0, -1.0
    count = scene.count_intersections(o3d.core.Tensor(rays)).numpy()
    many = rays[count > 1]
    if len(many) == 0:
        return {}
    hits = scene.list_intersections(o3d.core.Tensor(many))
    splits = hits["ray_splits"].numpy()
    face = hits["primitive_ids"].numpy().astype(np.int64)
    # per ray the nearest and farthest face (both of one chart: packed charts never share texels)
    near = np.minimum.reduceat(depth[face], splits[:-1])
    far = np.maximum.reduceat(depth[face], splits[:-1])
    ray = np.repeat(np.arange(len(many)), np.diff(splits))
    chart = atlas.face_chart[face[splits[:-1]]]
    # layers closer than a few texels hardly differ in colour (and a ray through a shared edge meets two neighbours)
    apart = far - near > MIN_LAYER_GAP_TEXELS * atlas.texel_size
    cuts: dict[int, tuple[float, np.ndarray]] = {}
    charts, samples = np.unique(chart[apart], return_counts=True)
    for c in charts[samples >= MIN_OVERLAP_SAMPLES]:
        rays_c = np.flatnonzero(apart & (chart == c))
        sel = rays_c[:: max(1, len(rays_c) // 1000)]  # the best of at most ~1000 candidate cuts
        lo, hi = near[sel], far[sel]
        candidates = (lo + hi) / 2
        separated = ((lo[None, :] < candidates[:, None]) & (candidates[:, None] < hi[None, :])).sum(axis=1)
        threshold = float(candidates[np.argmax(separated)])
        hit = np.isin(ray, rays_c)
        seed = np.unique(face[hit][depth[face[hit]] > threshold])
        cuts[int(c)] = (threshold, seed)
    return cuts


def _labels(normals: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(F,) axis of each face's chart: nearest axis to the smoothed normal, then majority smoothing and absorption."""
    from scipy.sparse import identity

    step = (_face_graph(neighbours, neighbours.reshape(-1) >= 0) + identity(len(normals))).tocsr()  # a face and its neighbours
    smooth = normals
    for _ in range(NORMAL_SMOOTHING_ROUNDS):
        smooth = step @ smooth
        smooth /= np.maximum(np.linalg.norm(smooth, axis=1, keepdims=True), 1e-30)
    cos = np.einsum("ij,kj->ik", normals, AXES)
    score = np.where(cos >= MIN_AXIS_COSINE, np.einsum("ij,kj->ik", smooth, AXES), -np.inf)
    label = np.where(np.isfinite(score.max(axis=1)), np.argmax(score, axis=1), np.argmax(cos, axis=1))
    return _absorb_small_charts(_smooth_labels(label, normals, neighbours), cos, neighbours)


def _absorb_small_charts(label: np.ndarray, cos: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Faces of charts under ``MIN_CHART_FACES`` take the axis of the largest neighbouring chart larger than theirs.

    Noise on a scan leaves thousands of charts of a few faces (on an 11-photo building 3 300 of 4 600 charts
    had five faces or fewer), each bordered by seams; a face moves only where the cosine between its normal
    and the new axis is at least ``ABSORB_MIN_COSINE``, so it never flips over in the projection. ``cos`` (F, 6): each
    face's normal against each axis.
    """
    rows = np.arange(len(label))
    safe = np.maximum(neighbours, 0)
    for _ in range(ABSORB_ROUNDS):
        chart, _count = _charts(label, neighbours)
        size = np.bincount(chart)
        own = size[chart]
        other = label[safe]
        other_size = np.where(neighbours >= 0, size[chart[safe]], 0)
        score = np.where((other_size > own[:, None]) & (cos[rows[:, None], other] >= ABSORB_MIN_COSINE), other_size, 0)
        best = np.argmax(score, axis=1)
        move = (own < MIN_CHART_FACES) & (score[rows, best] > 0)
        if not move.any():
            break
        label = label.copy()
        label[move] = other[rows, best][move]
    return label


def _smooth_labels(label: np.ndarray, normals: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Majority vote among a face and its neighbours, restricted to axes near the face's normal."""
    cos = np.einsum("ij,kj->ik", normals, AXES)  # (F, 6); einsum avoids BLAS thread contention
    rows = np.arange(len(label))
    for _ in range(SMOOTHING_ROUNDS):
        cand = np.concatenate([label[:, None], np.where(neighbours >= 0, label[np.maximum(neighbours, 0)], -1)], axis=1)
        votes = np.zeros((len(label), 6), dtype=np.int32)
        for j in range(4):
            ok = cand[:, j] >= 0
            np.add.at(votes, (rows[ok], cand[ok, j]), 1)
        score = votes + 0.5 * (np.arange(6)[None, :] == label[:, None])  # ties keep the own label
        score[cos < MIN_AXIS_COSINE] = -1.0
        best = np.argmax(score, axis=1)
        if np.array_equal(best, label):
            break
        label = best
    return label


def _charts(label: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of faces joined across edges where both sides have the same label."""
    from scipy.sparse.csgraph import connected_components

    dst = neighbours.reshape(-1)
    joined = (dst >= 0) & (np.repeat(label, 3) == label[np.maximum(dst, 0)])
    count, chart = connected_components(_face_graph(neighbours, joined), directed=False)
    return chart.astype(np.int64), int(count)


def _face_graph(neighbours: np.ndarray, joined: np.ndarray) -> coo_matrix:
    """(F, F) sparse matrix with a 1 for each face and the neighbour across each of its edges where ``joined`` (3F,)."""
    from scipy.sparse import coo_matrix

    f = len(neighbours)
    return coo_matrix((np.ones(int(joined.sum())), (np.repeat(np.arange(f), 3)[joined], neighbours.reshape(-1)[joined])), shape=(f, f))


def _plane_basis(axis: np.ndarray) -> np.ndarray:
    """(2, 3) orthonormal vectors spanning the plane perpendicular to ``axis``, right-handed."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, axis)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    return np.stack([e1, e2])


def _to_principal_axes(xy: np.ndarray, chart: np.ndarray, num_charts: int) -> np.ndarray:
    """Rotate each chart's 2D points so its minimum-area bounding rectangle is axis-aligned."""
    import cv2

    order = np.argsort(chart, kind="stable")
    bounds = np.searchsorted(chart[order], np.arange(num_charts + 1))
    angle = np.zeros(num_charts)
    pts = xy[order].astype(np.float32)
    for c in range(num_charts):
        chunk = pts[bounds[c] : bounds[c + 1]]
        if len(chunk) >= 3:
            angle[c] = math.radians(cv2.minAreaRect(chunk)[2])
    c, s = np.cos(angle)[chart], np.sin(angle)[chart]
    return np.stack([c * xy[:, 0] + s * xy[:, 1], -s * xy[:, 0] + c * xy[:, 1]], axis=1)


def _pack(extent: np.ndarray, size: int, padding: int, tolerance: float) -> tuple[float, np.ndarray, float]:
    """Shelf-pack chart rectangles (model units) at about the smallest texel size that fits ``size``^2.

    Returns the texel size (model units), each chart's top-left corner in texels (before its
    padding), and the fraction of the atlas the padded rectangles cover. The texel size is found by
    bisection to within ``tolerance`` (a fraction), from the area bound up.
    """
    area = float(np.sum((extent[:, 0] + 1e-12) * (extent[:, 1] + 1e-12)))
    usable = (size - 2 * padding) ** 2
    low = math.sqrt(area / usable) if area > 0 else 1.0
    order = np.argsort(-extent[:, 1], kind="stable")
    sorted_extent = extent[order]
    high, placed = low, _shelves(sorted_extent, low, size, padding)
    for _ in range(40):
        if placed is not None:
            break
        low, high = high, high * 1.1
        placed = _shelves(sorted_extent, high, size, padding)
    if placed is None:
        raise ValueError(f"{len(extent)} charts do not fit a {size}x{size} atlas; use a larger texture.texture_size")
    best = (high, placed)
    while best[0] > low * (1.0 + tolerance):
        mid = math.sqrt(low * best[0])
        trial = _shelves(sorted_extent, mid, size, padding)
        if trial is None:
            low = mid
        else:
            best = (mid, trial)
    texel, placed = best
    origin = np.empty((len(extent), 2))
    origin[order] = placed
    boxes = np.ceil(extent / texel) + 2 * padding + 1
    return texel, origin, float(np.sum(boxes[:, 0] * boxes[:, 1]) / size**2)


def _shelves(extent: np.ndarray, texel: float, size: int, padding: int) -> np.ndarray | None:
    """Top-left corners (N, 2) of rectangles (sorted by falling height) on shelves, or None if they do not fit.

    First fit decreasing height: each rectangle goes on the first shelf with room left in its row
    (it is never taller than the shelf, which its first, tallest rectangle set), else opens a new
    shelf below. A few large charts then no longer leave most of their rows empty.
    """
    w = np.ceil(extent[:, 0] / texel) + 2 * padding + 1
    h = np.ceil(extent[:, 1] / texel) + 2 * padding + 1
    if np.any(w > size):
        return None
    out = np.empty((len(w), 2))
    room = np.empty(len(w))  # width left on each shelf
    top = np.empty(len(w))  # y of each shelf
    shelves, y = 0, 0.0
    for i in range(len(w)):
        fits = np.flatnonzero(room[:shelves] >= w[i])
        if len(fits):
            k = fits[0]
        else:
            if y + h[i] > size:
                return None
            k, shelves = shelves, shelves + 1
            room[k], top[k] = size, y
            y += h[i]
        out[i] = (size - room[k], top[k])
        room[k] -= w[i]
    return out
