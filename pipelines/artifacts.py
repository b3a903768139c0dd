"""What one stage hands the next: the few fields each later stage reads from an earlier result.

Stages depend on these protocols, not on each other's result classes, so a stage can be run (and
tested) on any object that has the fields: a real result, a fixture's ground truth, or a model
folder from another tool. Coordinates are those of the sparse model (camera-from-world poses,
arbitrary model units) unless a field says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class SparseModel(Protocol):
    """A COLMAP model and the images its names refer to (from ``pipelines.sfm.reconstruct_sparse``)."""

    @property
    def sparse_dir(self) -> Path:
        """COLMAP model folder readable by ``pycolmap.Reconstruction``."""
        ...

    @property
    def images_dir(self) -> Path:
        """The working images the model's image names refer to."""
        ...


class DensePoints(Protocol):
    """The fused dense cloud (from ``pipelines.dense.run``)."""

    @property
    def points_path(self) -> Path:
        """Binary PLY with colours and unit normals facing the cameras, sparse-model frame."""
        ...


class Surface(Protocol):
    """The cleaned, decimated mesh (from ``pipelines.mesh.run``)."""

    @property
    def mesh_path(self) -> Path:
        """PLY triangle mesh with vertex colours and normals, sparse-model frame."""
        ...


class Textured(Protocol):
    """The mesh with its UV atlas and texture (from ``pipelines.texture.run``)."""

    @property
    def mesh(self) -> Path:
        """``.npz`` with vertices, faces, normals, colours and, when textured, uv (see ``TextureResult``)."""
        ...

    @property
    def texture_path(self) -> Path | None:
        """PNG of the atlas; ``None`` when not textured."""
        ...

    @property
    def textured(self) -> bool:
        ...
