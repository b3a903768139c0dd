"""Structure from motion with COLMAP: stages ``features``, ``matching`` and ``sparse``.

The three stages talk through files, like COLMAP itself: :func:`extract_features` writes SIFT
features into a COLMAP database, :func:`match_features` adds verified matches to it, and
:func:`reconstruct_sparse` maps it into a COLMAP binary model (camera-from-world poses, arbitrary
model units).
"""

from pipelines.sfm.features import FeaturesResult, extract_features
from pipelines.sfm.mapping import SparseResult, reconstruct_sparse
from pipelines.sfm.matching import MatchesResult, match_features, sequential_pairs, spatial_pairs

__all__ = [
    "FeaturesResult",
    "MatchesResult",
    "SparseResult",
    "extract_features",
    "match_features",
    "reconstruct_sparse",
    "sequential_pairs",
    "spatial_pairs",
]
