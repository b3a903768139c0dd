"""Which photos colour each face of the mesh: visibility, ranking and a photo-consistency vote.

A view *sees* a face when the face's centroid is inside its image, nothing of the mesh is in
between (ray cast), and it faces the camera within ``MIN_VIEW_COSINE``. Seeing views rank by
``cos^2 * focal / depth`` (frontal and close first). Visibility against the mesh cannot tell a
photo where something else stood in front of the surface (a passer-by, a pole the mesh lacks) or
where the face, a little off the true surface at a silhouette, lands on the background. So the
best ``VOTE_VIEWS`` photos each report the face's mean colour (exposure gains applied), and the
largest group that agrees within ``COLOUR_TOLERANCE`` wins; the others do not colour the face
(after Waechter, Moehrle & Goesele, "Let there be color!", ECCV 2014). Among the winners the
best ``MAX_BLEND_VIEWS`` within ``BLEND_RATIO`` of the best blend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.progress import CancelToken
from pipelines.texture.blend import IMAGE_MARGIN, sample_photo
from pipelines.views import ColmapView

MAX_BLEND_VIEWS = 2
"""Photos blended per face (more hides exposure seams better, and costs baking time)."""
BLEND_RATIO = 0.6
"""Views scoring below this fraction of a face's best view do not colour it."""
MIN_VIEW_COSINE = 0.2
"""Views seeing a face at more than ~78 deg from its normal are not used."""
VOTE_VIEWS = 5
"""Best-ranked photos per face that take part in the photo-consistency vote."""
COLOUR_TOLERANCE = 0.15
"""Two photos agree on a face when its mean colours differ by less than this (RGB distance, 0..1 sRGB)."""


@dataclass(frozen=True)
class FaceViews:
    """Per face, the photos that colour it and what the vote saw."""

    candidates: np.ndarray
    """(F, MAX_BLEND_VIEWS) view indices, best first; -1 = none."""
    weights: np.ndarray
    """(F, MAX_BLEND_VIEWS) blend weights in 0..1 (0 where no view)."""
    colour: np.ndarray
    """(F, 3) mean colour of the face in the agreeing photos (0..1, gains applied); NaN where no photo sees it."""
    rejected: int
    """Face-photo pairs that saw the face but lost the vote."""
    voted: int
    """Face-photo pairs that took part in the vote."""


def rank_views(vertices: np.ndarray, faces: np.ndarray, views: list[ColmapView], scene: Any, cancel: CancelToken, keep: int = VOTE_VIEWS) -> tuple[np.ndarray, np.ndarray]:
    """Per face, the ``keep`` best view indices (-1 = none) and their scores (0 = none), best first.

    ``scene`` is an Open3D ``RaycastingScene`` of the same mesh (occlusion test).
    """
    import open3d as o3d

    centroid = vertices[faces].mean(axis=1)
    normal = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
    # running top-K so memory stays O(faces), whatever the number of photos
    top = np.zeros((len(faces), keep + 1), dtype=np.float32)
    order = np.full((len(faces), keep + 1), -1, dtype=np.int64)
    rows = np.arange(len(faces))[:, None]
    for vi, view in enumerate(views):
        cancel.check()
        uv, depth = view.project(centroid)
        idx = np.flatnonzero(view.in_image(uv, IMAGE_MARGIN) & (depth > 0))
        d = centroid[idx] - view.center
        dist = np.linalg.norm(d, axis=1)
        d /= dist[:, None]
        cos = np.abs(np.einsum("ij,ij->i", d, normal[idx]))  # winding-agnostic; occlusion decides the side
        front = cos >= MIN_VIEW_COSINE
        idx, d, dist, cos = idx[front], d[front], dist[front], cos[front]
        rays = np.concatenate([np.broadcast_to(view.center, d.shape), d], axis=1).astype(np.float32)
        t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        visible = t_hit >= dist * (1.0 - 1e-3) - 1e-6
        idx = idx[visible]
        top[:, -1], order[:, -1] = 0.0, -1
        top[idx, -1], order[idx, -1] = cos[visible] ** 2 * view.focal_px / depth[idx], vi
        rank = np.argsort(-top, axis=1, kind="stable")
        top, order = top[rows, rank], order[rows, rank]
    return order[:, :keep], top[:, :keep]


def face_colours(vertices: np.ndarray, faces: np.ndarray, order: np.ndarray, views: list[ColmapView], images: list[np.ndarray], gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour (F, K, 3) of each face in each of its ranked views ``order`` (F, K), from four points
    (the centroid and the points a third of the way to each corner), gains applied; and validity (F, K)."""
    tri = vertices[faces]
    centroid = tri.mean(axis=1)
    points = np.stack([centroid] + [(2.0 * centroid + tri[:, k]) / 3.0 for k in range(3)], axis=1)  # (F, 4, 3)
    colour = np.zeros((*order.shape, 3), dtype=np.float32)
    valid = np.zeros(order.shape, dtype=bool)
    for vi in np.unique(order[order >= 0]):
        face, slot = np.nonzero(order == vi)
        rgb, ok = sample_photo(images[vi], views[vi], points[face].reshape(-1, 3))
        ok = ok.reshape(-1, 4).all(axis=1)
        colour[face, slot] = rgb.reshape(-1, 4, 3).mean(axis=1) * gains[vi]
        valid[face, slot] = ok
    return colour, valid


def vote(order: np.ndarray, score: np.ndarray, colour: np.ndarray, valid: np.ndarray, enabled: bool = True) -> FaceViews:
    """Keep, per face, the ranked views (F, K) whose colours agree with the largest consistent group.

    Each view's support is the number of views within ``COLOUR_TOLERANCE`` of it (itself included),
    plus its score relative to the best as a tie-break (so of two photos that disagree the better
    one wins). The winner's group are the agreeing views; they blend as before the vote. With
    ``enabled`` false every seeing view agrees (``texture.photo_consistency=false``).
    """
    seen = valid & (score > 0) & (order >= 0)
    if enabled:
        distance = np.stack([np.linalg.norm(colour - colour[:, i : i + 1], axis=2) for i in range(order.shape[1])], axis=1)  # (F, K, K)
        agree = (distance < COLOUR_TOLERANCE) & seen[:, :, None] & seen[:, None, :]
    else:
        agree = seen[:, :, None] & seen[:, None, :]
    best = np.maximum(score[:, :1], 1e-30)
    support = agree.sum(axis=2) + np.where(seen, score / best, 0.0) * 0.5
    winner = np.argmax(np.where(seen, support, -1.0), axis=1)
    rows = np.arange(len(order))
    inlier = agree[rows, winner] & seen
    # the agreeing views, in rank order, blended like the old top-K (ratio to the best agreeing view)
    rank = np.argsort(~inlier, axis=1, kind="stable")[:, :MAX_BLEND_VIEWS]
    top = np.where(inlier[rows[:, None], rank], score[rows[:, None], rank], 0.0)
    ratio = top / np.maximum(top[:, :1], 1e-30)
    keep = (top > 0) & (ratio >= BLEND_RATIO)
    candidates = np.where(keep, order[rows[:, None], rank], -1)
    weights = np.where(keep, ratio**4, 0.0).astype(np.float32)
    count = inlier.sum(axis=1)
    mean = (colour * inlier[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
    mean[count == 0] = np.nan
    return FaceViews(candidates, weights, mean.astype(np.float32), int((seen & ~inlier).sum()), int(seen.sum()))


def vertex_weights(faces: np.ndarray, num_vertices: int, candidates: np.ndarray, weights: np.ndarray, num_views: int) -> np.ndarray:
    """(views, V) mean over a vertex's faces of each view's face weight (0 where it is no candidate)."""
    per_vertex = np.zeros((num_views, num_vertices), dtype=np.float32)
    count = np.bincount(faces.reshape(-1), minlength=num_vertices).astype(np.float32)
    for slot in range(candidates.shape[1]):
        ok = candidates[:, slot] >= 0
        for k in range(3):
            np.add.at(per_vertex, (candidates[ok, slot], faces[ok, k]), weights[ok, slot])
    return per_vertex / np.maximum(count, 1.0)[None, :]
