"""Stage ``matching``: match image pairs and verify their two-view geometry, into the COLMAP database.

Which pairs: every pair up to ``sfm.exhaustive_max_photos`` photos; beyond, capture-order
neighbours with loop-closing links, plus GPS neighbours, so the cost grows linearly.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ReconstructionFailed
from pipelines.geometry import ecef_from_geodetic
from pipelines.options import SfmOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.sfm.colmap import NOT_PLACED_ADVICE, colmap_cancellable, route_colmap_log, timed_batches
from pipelines.sfm.features import FeaturesResult

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

SPATIAL_MAX_DISTANCE_M = 50.0
"""GPS neighbours further apart than this (metres) are not paired."""


@dataclass(frozen=True)
class MatchesResult:
    """Geometrically verified matches, added to the same COLMAP database."""

    database_path: Path
    images_dir: Path
    work_dir: Path
    image_names: list[str]
    pairing: str
    """``exhaustive``, ``sequential`` or ``sequential+spatial``."""
    num_pairs: int
    """Image pairs matched."""
    num_verified_pairs: int
    """Pairs with a verified two-view geometry (enough consistent matches)."""

    def summary(self) -> dict[str, Any]:
        return {"pairing": self.pairing, "pairs_matched": self.num_pairs, "pairs_verified": self.num_verified_pairs}


def match_features(feats: FeaturesResult, options: SfmOptions, progress: StageProgress, cancel: CancelToken) -> MatchesResult:
    """Match image pairs and verify their two-view geometry, in chunks (progress + cancel between).

    Every pair up to ``options.exhaustive_max_photos`` photos; beyond, each photo with its
    ``sequential_overlap`` neighbours in capture order (plus log-spaced and wrap-around links for
    loop closure) and, with GPS, its nearest neighbours: linear in the number of photos.
    """
    import pycolmap

    route_colmap_log(feats.work_dir)
    names = feats.image_names
    if len(names) < 2:
        raise ReconstructionFailed("matching", f"{len(names)} photo(s) cannot be matched: add overlapping photos")
    if len(names) <= options.exhaustive_max_photos:
        pairs, pairing = list(itertools.combinations(names, 2)), "exhaustive"
    else:
        pairs = sequential_pairs(names, options.sequential_overlap)
        pairing = "sequential"
        if len(feats.gps) >= 2:
            pairs = _union(pairs, spatial_pairs(feats.gps, options.sequential_overlap, SPATIAL_MAX_DISTANCE_M))
            pairing = "sequential+spatial"
    logger.info("%s pairing: %d pairs of %d photos", pairing, len(pairs), len(names))

    matching = pycolmap.FeatureMatchingOptions()
    verification = pycolmap.TwoViewGeometryOptions()
    pairs_file = feats.work_dir / "pairs.txt"

    def match(chunk: Sequence[tuple[str, str]]) -> None:
        pairs_file.write_text("".join(f"{a} {b}\n" for a, b in chunk))
        with colmap_cancellable(cancel) as token:
            pycolmap.match_image_pairs(
                feats.database_path,
                matching_options=matching,
                pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file)),
                verification_options=verification,
                device=pycolmap.Device.auto,
                cancellation_token=token,
            )

    for done in timed_batches(pairs, match, first=16, cancel=cancel):
        progress(done / len(pairs), f"matched {done}/{len(pairs)} photo pairs")

    db = pycolmap.Database.open(str(feats.database_path))
    try:
        # COLMAP counts every pair it tried; a pair is verified when its two-view geometry has inliers.
        verified = sum(1 for n in db.read_two_view_geometry_num_inliers()[1] if n > 0)
    finally:
        db.close()
    logger.info("%d of %d pairs verified", verified, len(pairs))
    if verified == 0:
        raise ReconstructionFailed("matching", f"no two photos share enough features: {NOT_PLACED_ADVICE}")
    return MatchesResult(
        database_path=feats.database_path,
        images_dir=feats.images_dir,
        work_dir=feats.work_dir,
        image_names=list(names),
        pairing=pairing,
        num_pairs=len(pairs),
        num_verified_pairs=verified,
    )


def sequential_pairs(names: Sequence[str], overlap: int) -> list[tuple[str, str]]:
    """Pairs of photos at most ``overlap`` apart in capture order, plus links 2^k apart (k above
    log2(overlap)) and wrap-around pairs (a walk around an object ends where it began), so loops
    close without a vocabulary tree. About ``n * (overlap + log2 n)`` pairs."""
    n = len(names)
    steps = set(range(1, overlap + 1)) | {2**k for k in range(max(1, overlap.bit_length()), max(1, n.bit_length()))}
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for step in steps:
            j = i + step
            if j < n:
                pairs.add((i, j))
            elif step <= overlap and j - n < i:  # wrap around: last photos with the first ones
                pairs.add((j - n, i))
    return [(names[i], names[j]) for i, j in sorted(pairs)]


def spatial_pairs(gps: dict[str, tuple[float, float, float]], neighbours: int, max_distance_m: float) -> list[tuple[str, str]]:
    """Each photo with its ``neighbours`` nearest (by GPS, in metres) within ``max_distance_m``."""
    import numpy as np
    from scipy.spatial import cKDTree

    names = sorted(gps)
    xyz = ecef_from_geodetic(np.array([gps[n] for n in names], dtype=np.float64))
    k = min(neighbours + 1, len(names))
    dist, idx = cKDTree(xyz).query(xyz, k=k, distance_upper_bound=max_distance_m)
    pairs = {
        (min(names[i], names[j]), max(names[i], names[j]))
        for i in range(len(names))
        for d, j in zip(np.atleast_1d(dist[i]), np.atleast_1d(idx[i]), strict=True)
        if j != i and j < len(names) and math.isfinite(d)
    }
    return sorted(pairs)


def _union(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen = {tuple(sorted(p)) for p in a}
    return a + [p for p in b if tuple(sorted(p)) not in seen]
