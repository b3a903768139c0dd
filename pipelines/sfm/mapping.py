"""Stage ``sparse``: map the verified matches into camera poses and 3D points (COLMAP).

Poses in the written model are COLMAP's: camera-from-world, in arbitrary model units (no metric
scale); image names refer to the working images of the ingest stage.

Run alone (hloc-style; what ``mapper=global`` starts in a child process so a cancel can stop it):
``python -m pipelines.sfm.mapping global DATABASE IMAGES_DIR OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.child import ChildProcess, die_with_parent
from pipelines.errors import ReconstructionFailed
from pipelines.files import atomic_dir
from pipelines.options import SfmOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.sfm.colmap import NOT_PLACED_ADVICE, colmap_cancellable, route_colmap_log
from pipelines.sfm.intrinsics import refine_intrinsics
from pipelines.sfm.matching import MatchesResult

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparseResult:
    """The largest sparse model: registered cameras (camera-from-world poses) and 3D points."""

    sparse_dir: Path
    """COLMAP binary model (cameras.bin, images.bin, points3D.bin, rigs.bin, frames.bin)."""
    images_dir: Path
    """The working images; image names in the model refer to files here."""
    registered: list[str]
    unregistered: list[str]
    """Photos that could not be placed in the model."""
    num_points3d: int
    mean_reprojection_error_px: float
    mean_track_length: float
    """Mean number of photos that see each 3D point."""
    mapper: str
    intrinsics: dict[str, Any] = field(default_factory=dict)
    """Per camera: whether its principal point was refined and why (:mod:`pipelines.sfm.intrinsics`)."""

    def load(self) -> pycolmap.Reconstruction:
        """Read the model (a fresh ``pycolmap.Reconstruction`` each call)."""
        import pycolmap

        return pycolmap.Reconstruction(str(self.sparse_dir))

    def summary(self) -> dict[str, Any]:
        return {
            "mapper": self.mapper,
            "registered": len(self.registered),
            "photos": len(self.registered) + len(self.unregistered),
            "unregistered": list(self.unregistered),
            "points3d": self.num_points3d,
            "mean_reprojection_error_px": round(self.mean_reprojection_error_px, 4),
            "mean_track_length": round(self.mean_track_length, 3),
            "intrinsics": self.intrinsics,
        }


def reconstruct_sparse(
    matches: MatchesResult, sparse_dir: Path, options: SfmOptions, progress: StageProgress, cancel: CancelToken
) -> SparseResult:
    """Map the matches into camera poses and 3D points; keep the largest model, write it to ``sparse_dir``.

    Raises :class:`ReconstructionFailed` naming the photos that could not be placed when fewer
    than 3 or than ``options.min_registered_fraction`` of them are.
    """
    route_colmap_log(matches.work_dir)
    sparse_dir = Path(sparse_dir)
    mapper_dir = matches.work_dir / "mapper"
    shutil.rmtree(mapper_dir, ignore_errors=True)
    mapper_dir.mkdir(parents=True)
    total = len(matches.image_names)
    if options.mapper == "global":
        models = _global_mapping(matches, mapper_dir, progress, cancel)
    else:
        models = _incremental_mapping(matches, mapper_dir, total, progress, cancel)
    cancel.check()

    best = max(models, key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None)
    placed = {best.image(i).name for i in best.reg_image_ids()} if best is not None else set()
    registered = [n for n in matches.image_names if n in placed]
    unregistered = [n for n in matches.image_names if n not in placed]
    logger.info("%s mapping placed %d of %d photos in the largest of %d model(s)", options.mapper, len(registered), total, len(models))
    if best is None or len(registered) < 3 or len(registered) < options.min_registered_fraction * total:
        missing = ", ".join(unregistered[:12]) + (f" and {len(unregistered) - 12} more" if len(unregistered) > 12 else "")
        raise ReconstructionFailed("sparse", f"only {len(registered)} of {total} photos could be placed: {NOT_PLACED_ADVICE}. Not placed: {missing}")

    progress(0.955, "refining the principal points")  # after the mapper's 0.05..0.95
    best, intrinsics = refine_intrinsics(best, options)
    cancel.check()
    progress(0.97, "writing the sparse model")
    with atomic_dir(sparse_dir) as partial:
        best.write_binary(str(partial))
    return SparseResult(
        sparse_dir=sparse_dir,
        images_dir=matches.images_dir,
        registered=registered,
        unregistered=unregistered,
        num_points3d=best.num_points3D(),
        mean_reprojection_error_px=float(best.compute_mean_reprojection_error()),
        mean_track_length=float(best.compute_mean_track_length()) if best.num_points3D() else 0.0,
        mapper=options.mapper,
        intrinsics=intrinsics.summary(),
    )


def _incremental_mapping(
    matches: MatchesResult, mapper_dir: Path, total: int, progress: StageProgress, cancel: CancelToken
) -> list[pycolmap.Reconstruction]:
    """COLMAP's incremental mapper; progress is photos registered / photos."""
    import pycolmap

    placed = 2  # the initial pair

    def on_next_image() -> None:  # called by COLMAP after each photo registered beyond the initial pair
        nonlocal placed
        placed += 1
        progress(0.05 + 0.9 * min(1.0, placed / total), f"placed {min(placed, total)}/{total} photos")

    def on_initial_pair() -> None:
        progress(0.05, "found an initial pair of photos")

    mapper_options = pycolmap.IncrementalPipelineOptions()
    mapper_options.min_model_size = min(mapper_options.min_model_size, max(3, total // 4))
    with colmap_cancellable(cancel) as token:
        models = pycolmap.incremental_mapping(
            matches.database_path,
            matches.images_dir,
            mapper_dir,
            mapper_options,
            initial_image_pair_callback=on_initial_pair,
            next_image_callback=on_next_image,
            cancellation_token=token,
        )
    return list(models.values())


def _global_mapping(matches: MatchesResult, mapper_dir: Path, progress: StageProgress, cancel: CancelToken) -> list[pycolmap.Reconstruction]:
    """COLMAP's global mapper (GLOMAP) in a child process: pycolmap's global_mapping takes no
    cancellation token, so a cancel kills the child. Progress is elapsed time against a rough
    estimate from the number of verified pairs (global mapping reports nothing while it runs)."""
    import pycolmap

    expected_s = 5.0 + 0.05 * matches.num_verified_pairs

    def tick(elapsed: float) -> None:
        progress(0.9 * (1.0 - math.exp(-elapsed / expected_s)), f"global mapping, {elapsed:.0f} s")

    log = matches.work_dir / "global_mapper.log"
    args = ["global", matches.database_path, matches.images_dir, mapper_dir]
    with ChildProcess("pipelines.sfm.mapping", args, log) as child:
        code = child.wait(cancel, tick, tick_s=0.25)
    if code != 0:
        raise ReconstructionFailed("sparse", f"global mapping crashed (exit {code}); see {log}")
    return [pycolmap.Reconstruction(str(d)) for d in sorted(mapper_dir.iterdir()) if (d / "images.bin").exists()]


def _global_mapping_main(database: Path, images_dir: Path, out_dir: Path) -> None:
    """Child-process side of :func:`_global_mapping`: writes model ``i`` to ``out_dir/i``."""
    die_with_parent()
    import pycolmap

    route_colmap_log(out_dir.parent)
    models = pycolmap.global_mapping(database, images_dir, out_dir, pycolmap.GlobalPipelineOptions())
    for i, rec in models.items():
        (out_dir / str(i)).mkdir(parents=True, exist_ok=True)
        rec.write_binary(str(out_dir / str(i)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sfm.mapping", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    glob = sub.add_parser("global", help="run COLMAP's global mapper on a matched database")
    glob.add_argument("database", type=Path)
    glob.add_argument("images_dir", type=Path)
    glob.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    _global_mapping_main(args.database, args.images_dir, args.output_dir)


if __name__ == "__main__":
    main()
