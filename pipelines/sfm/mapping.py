"""Features, matching and sparse reconstruction with COLMAP (pipeline stages ``features``,
``matching`` and ``sparse``).

The three functions talk through files, like COLMAP itself: ``extract_features`` writes SIFT
features into a COLMAP database in the work folder, ``match_features`` adds verified matches to it,
and ``reconstruct_sparse`` maps the database into a COLMAP binary model in ``sparse_dir``. Poses
in that model are COLMAP's: camera-from-world, in arbitrary model units (no metric scale); image
names refer to the working images of the ingest stage.

COLMAP's own log goes to ``<work_dir>/colmap.log.<date>-<time>.<pid>``; only its errors reach stderr.

Run alone (hloc-style; what ``mapper=global`` starts in a child process so a cancel can stop it):
``python -m pipelines.sfm global DATABASE IMAGES_DIR OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.errors import Cancelled, ReconstructionFailed
from pipelines.ingest import IngestedPhoto, IngestResult
from pipelines.options import SfmOptions
from pipelines.progress import CancelToken, StageProgress

if TYPE_CHECKING:
    import numpy as np
    import pycolmap

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_FOCAL_FACTOR = 1.2
"""Initial focal length (x the image's longest side, px) without an EXIF prior; COLMAP's default."""
UPSAMPLE_BELOW_PX = 1000
"""SIFT starts one octave below the image (2x upsampled) only for images whose long side is below
this: at 1024 px that gave 2.6x the keypoints but took 4x longer to extract and 2.2x longer to match,
for no more registered photos; small images need it to find enough features."""
MIN_FEATURES = 500
"""Photos with fewer SIFT features than max(this, max_features / 8) are extracted again with a lower
detection threshold."""
LOW_CONTRAST_THRESHOLD_DIVISORS = (1, 3, 9)
"""SIFT peak thresholds tried, as fractions of COLMAP's default (1/3 recovered every photo of the
weak_texture fixture: 576 -> 4471 features per photo, 0 -> 16 of 16 placed)."""
CALL_SECONDS = 1.5
"""Target duration of one pycolmap extraction/matching call. Each call costs ~0.25 s of set-up
(measured: 66 pairs in one call 2.5 s, in chunks of 16 3.4 s, of 4 7.0 s), so batches are sized
from the measured time per item to amortise it while reporting progress every ~1.5 s."""
SPATIAL_MAX_DISTANCE_M = 50.0
"""GPS neighbours further apart than this (metres) are not paired."""
_NOT_PLACED_ADVICE = (
    "take more overlapping photos (every part of the object in at least 3 photos, neighbouring "
    "photos overlapping by about two thirds), keep the subject sharp and textured, and avoid moving objects"
)


@dataclass(frozen=True)
class FeaturesResult:
    """SIFT features of every working image in a COLMAP database."""

    database_path: Path
    images_dir: Path
    work_dir: Path
    image_names: list[str]
    """Working image names in capture (input-name) order; sequential pairing follows it."""
    gps: dict[str, tuple[float, float, float]]
    """(latitude deg, longitude deg, altitude m) of the photos that have GPS EXIF."""
    num_cameras: int
    """COLMAP cameras: one per device (same size, make/model and focal prior)."""
    keypoints: dict[str, int]
    """SIFT keypoints per image."""

    def summary(self) -> dict[str, Any]:
        counts = list(self.keypoints.values()) or [0]
        return {
            "cameras": self.num_cameras,
            "keypoints_mean": round(sum(counts) / len(counts), 1),
            "keypoints_min": min(counts),
            "photos_with_gps": len(self.gps),
        }


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
        }


def route_colmap_log(work_dir: Path) -> Path:
    """Send COLMAP's (glog) log to a file in ``work_dir``, keep only errors on stderr; returns the
    file-name prefix (glog appends ``<date>-<time>.<pid>``). glog is process-wide: the last call wins."""
    import pycolmap

    log = pycolmap.logging
    prefix = Path(work_dir) / "colmap.log."
    log.logtostderr = False
    log.alsologtostderr = False
    log.stderrthreshold = int(log.Level.ERROR)
    log.set_log_destination(log.Level.INFO, str(prefix))  # the INFO file receives every severity
    for level in (log.Level.WARNING, log.Level.ERROR, log.Level.FATAL):
        log.set_log_destination(level, "")  # no extra per-severity files (glog would put them in /tmp)
    return prefix


@contextlib.contextmanager
def _colmap_cancellable(cancel: CancelToken) -> Iterator[pycolmap.CancellationToken]:
    """A pycolmap token tied to ``cancel``; COLMAP's InterruptedError becomes :class:`Cancelled`."""
    try:
        yield cancel.colmap()
    except InterruptedError:
        if cancel.cancelled:
            raise Cancelled() from None
        raise
    cancel.check()


def extract_features(
    ing: IngestResult, work_dir: Path, options: SfmOptions, progress: StageProgress, cancel: CancelToken
) -> FeaturesResult:
    """SIFT features of every working image into ``work_dir/database.db`` (rebuilt from scratch).

    Photos from one device share one COLMAP camera (COLMAP's SINGLE mode); different devices get
    one camera each. EXIF focal lengths become the cameras' focal priors. Photos where SIFT finds
    few features (low contrast: fog, white walls, dim light) are extracted again with a lower
    detection threshold. Progress and cancellation happen between extraction calls.
    """
    import pycolmap

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    route_colmap_log(work_dir)
    database_path = work_dir / "database.db"
    partial = work_dir / "database.partial.db"
    for stale in (database_path, partial):
        stale.unlink(missing_ok=True)

    groups = _camera_groups(ing.photos)
    db = pycolmap.Database.open(str(partial))
    try:
        camera_ids = [db.write_camera(_initial_camera(group[0], options.camera_model)) for group in groups]
    finally:
        db.close()
    camera_of = {p.name: camera_id for group, camera_id in zip(groups, camera_ids, strict=True) for p in group}
    logger.info("%d photos, %d camera(s) (%s)", len(ing.photos), len(groups), options.camera_model)

    longest = max(max(p.width, p.height) for p in ing.photos)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = options.max_features
    extraction.sift.first_octave = -1 if longest < UPSAMPLE_BELOW_PX else 0
    extraction.max_image_size = longest  # ingest already downscaled; never downscale again
    default_threshold = extraction.sift.peak_threshold

    todo, total = list(ing.photos), len(ing.photos)
    few = max(MIN_FEATURES, options.max_features // 8)
    for attempt, divisor in enumerate(LOW_CONTRAST_THRESHOLD_DIVISORS):
        if attempt:
            logger.info("%d photo(s) with fewer than %d features, retrying at 1/%d of the SIFT threshold: %s",
                        len(todo), few, divisor, ", ".join(p.name for p in todo))
            _delete_features(partial, [p.name for p in todo])
        extraction.sift.peak_threshold = default_threshold / divisor
        span = (0.0, 0.9) if attempt == 0 else (0.9 + 0.05 * (attempt - 1), 0.9 + 0.05 * attempt)
        _extract(partial, ing.images_dir, todo, camera_of, extraction, options.camera_model, span, progress, cancel)
        keypoints = _keypoint_counts(partial)
        missing = [p.name for p in todo if p.name not in keypoints]
        if missing:
            raise ReconstructionFailed("features", f"COLMAP could not read {', '.join(missing)}; see the colmap.log file in {work_dir}")
        todo = [p for p in todo if keypoints[p.name] < few]
        if not todo:
            break
    if todo:
        logger.warning("photos with few features even at a low threshold (blurry, dark or plain): %s", ", ".join(p.name for p in todo))
    progress(1.0, f"features of {total} photos")
    os.replace(partial, database_path)
    return FeaturesResult(
        database_path=database_path,
        images_dir=ing.images_dir,
        work_dir=work_dir,
        image_names=[p.name for p in ing.photos],
        gps={p.name: p.gps for p in ing.photos if p.gps is not None},
        num_cameras=len(groups),
        keypoints={p.name: keypoints[p.name] for p in ing.photos},
    )


def _extract(
    database: Path,
    images_dir: Path,
    photos: Sequence[IngestedPhoto],
    camera_of: dict[str, int],
    extraction: pycolmap.FeatureExtractionOptions,
    camera_model: str,
    span: tuple[float, float],
    progress: StageProgress,
    cancel: CancelToken,
) -> None:
    """Extract ``photos`` into ``database`` with each photo's existing camera; progress within ``span``."""
    import pycolmap

    done = 0
    for camera_id in dict.fromkeys(camera_of[p.name] for p in photos):
        group = [p for p in photos if camera_of[p.name] == camera_id]
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera_model
        reader.existing_camera_id = camera_id

        def extract(batch: Sequence[IngestedPhoto], reader: pycolmap.ImageReaderOptions = reader) -> None:
            with _colmap_cancellable(cancel) as token:
                pycolmap.extract_features(
                    database,
                    images_dir,
                    image_names=[p.name for p in batch],
                    camera_mode=pycolmap.CameraMode.SINGLE,
                    reader_options=reader,
                    extraction_options=extraction,
                    device=pycolmap.Device.auto,
                    cancellation_token=token,
                )

        for batch_done in _timed_batches(group, extract, first=max(2, os.cpu_count() or 2), cancel=cancel):
            fraction = (done + batch_done) / len(photos)
            progress(span[0] + (span[1] - span[0]) * fraction, f"features of {done + batch_done}/{len(photos)} photos")
        done += len(group)


def _keypoint_counts(database: Path) -> dict[str, int]:
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        return {image.name: db.num_keypoints_for_image(image.image_id) for image in db.read_all_images()}
    finally:
        db.close()


def _delete_features(database: Path, names: Sequence[str]) -> None:
    """Remove the keypoints and descriptors of ``names`` so COLMAP extracts them again (plain SQL on
    COLMAP's long-stable schema, as hloc does; pycolmap has no per-image delete)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        ids = [row[0] for name in names for row in conn.execute("SELECT image_id FROM images WHERE name = ?", (name,))]
        for table in ("keypoints", "descriptors"):
            conn.executemany(f"DELETE FROM {table} WHERE image_id = ?", [(i,) for i in ids])


def _timed_batches(items: Sequence[T], work: Callable[[Sequence[T]], None], *, first: int, cancel: CancelToken) -> Iterator[int]:
    """Run ``work`` over ``items`` in consecutive batches of about :data:`CALL_SECONDS` each
    (sized from the time per item measured so far); yields how many items are done after each."""
    done, size = 0, first
    while done < len(items):
        cancel.check()
        batch = items[done : done + size]
        started = time.monotonic()
        work(batch)
        per_item = max(1e-3, (time.monotonic() - started) / len(batch))
        done += len(batch)
        size = max(1, min(1024, round(CALL_SECONDS / per_item)))
        yield done


def _camera_groups(photos: Sequence[IngestedPhoto]) -> list[list[IngestedPhoto]]:
    """Photos grouped by device: same working size, make, model and focal prior (0.1 px)."""
    groups: dict[tuple[Any, ...], list[IngestedPhoto]] = {}
    for p in photos:
        focal = None if p.focal_px is None else round(p.focal_px, 1)
        groups.setdefault((p.width, p.height, p.make, p.model, focal), []).append(p)
    return list(groups.values())


def _initial_camera(photo: IngestedPhoto, model: str) -> pycolmap.Camera:
    """A camera with the EXIF focal prior (or COLMAP's default guess), principal point at the centre."""
    import pycolmap

    focal = photo.focal_px or DEFAULT_FOCAL_FACTOR * max(photo.width, photo.height)
    camera = pycolmap.Camera.create_from_model_name(0, model, focal, photo.width, photo.height)
    camera.has_prior_focal_length = photo.focal_px is not None
    return camera


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
        with _colmap_cancellable(cancel) as token:
            pycolmap.match_image_pairs(
                feats.database_path,
                matching_options=matching,
                pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file)),
                verification_options=verification,
                device=pycolmap.Device.auto,
                cancellation_token=token,
            )

    for done in _timed_batches(pairs, match, first=16, cancel=cancel):
        progress(done / len(pairs), f"matched {done}/{len(pairs)} photo pairs")

    db = pycolmap.Database.open(str(feats.database_path))
    try:
        # COLMAP counts every pair it tried; a pair is verified when its two-view geometry has inliers.
        verified = sum(1 for n in db.read_two_view_geometry_num_inliers()[1] if n > 0)
    finally:
        db.close()
    logger.info("%d of %d pairs verified", verified, len(pairs))
    if verified == 0:
        raise ReconstructionFailed("matching", f"no two photos share enough features: {_NOT_PLACED_ADVICE}")
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
    xyz = _ecef(np.array([gps[n] for n in names], dtype=np.float64))
    k = min(neighbours + 1, len(names))
    dist, idx = cKDTree(xyz).query(xyz, k=k, distance_upper_bound=max_distance_m)
    pairs = {
        (min(names[i], names[j]), max(names[i], names[j]))
        for i in range(len(names))
        for d, j in zip(np.atleast_1d(dist[i]), np.atleast_1d(idx[i]), strict=True)
        if j != i and j < len(names) and math.isfinite(d)
    }
    return sorted(pairs)


def _ecef(lat_lon_alt: np.ndarray) -> np.ndarray:
    """WGS84 latitude/longitude (degrees) and altitude (m) to Earth-centred Cartesian metres."""
    import numpy as np

    a, e2 = 6378137.0, 6.69437999014e-3
    lat, lon, alt = np.radians(lat_lon_alt[:, 0]), np.radians(lat_lon_alt[:, 1]), lat_lon_alt[:, 2]
    n = a / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    return np.stack([(n + alt) * np.cos(lat) * np.cos(lon), (n + alt) * np.cos(lat) * np.sin(lon), (n * (1 - e2) + alt) * np.sin(lat)], axis=1)


def _union(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen = {tuple(sorted(p)) for p in a}
    return a + [p for p in b if tuple(sorted(p)) not in seen]


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
        raise ReconstructionFailed("sparse", f"only {len(registered)} of {total} photos could be placed: {_NOT_PLACED_ADVICE}. Not placed: {missing}")

    progress(0.97, "writing the sparse model")
    partial = sparse_dir.with_name(sparse_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    best.write_binary(str(partial))
    shutil.rmtree(sparse_dir, ignore_errors=True)
    os.replace(partial, sparse_dir)
    return SparseResult(
        sparse_dir=sparse_dir,
        images_dir=matches.images_dir,
        registered=registered,
        unregistered=unregistered,
        num_points3d=best.num_points3D(),
        mean_reprojection_error_px=float(best.compute_mean_reprojection_error()),
        mean_track_length=float(best.compute_mean_track_length()) if best.num_points3D() else 0.0,
        mapper=options.mapper,
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
    with _colmap_cancellable(cancel) as token:
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

    cmd = [sys.executable, "-m", "pipelines.sfm", "global", str(matches.database_path), str(matches.images_dir), str(mapper_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    expected_s = 5.0 + 0.05 * matches.num_verified_pairs
    start = time.monotonic()
    with open(matches.work_dir / "global_mapper.stderr", "wb") as stderr:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            while child.poll() is None:
                if cancel.wait(0.25):
                    raise Cancelled()
                elapsed = time.monotonic() - start
                progress(0.9 * (1.0 - math.exp(-elapsed / expected_s)), f"global mapping, {elapsed:.0f} s")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    if child.returncode != 0:
        raise ReconstructionFailed("sparse", f"global mapping crashed (exit {child.returncode}); see {matches.work_dir / 'global_mapper.stderr'}")
    return [pycolmap.Reconstruction(str(d)) for d in sorted(mapper_dir.iterdir()) if (d / "images.bin").exists()]


def _global_mapping_main(database: Path, images_dir: Path, out_dir: Path) -> None:
    """Child-process side of :func:`_global_mapping`: writes model ``i`` to ``out_dir/i``."""
    import pycolmap

    route_colmap_log(out_dir.parent)
    models = pycolmap.global_mapping(database, images_dir, out_dir, pycolmap.GlobalPipelineOptions())
    for i, rec in models.items():
        (out_dir / str(i)).mkdir(parents=True, exist_ok=True)
        rec.write_binary(str(out_dir / str(i)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sfm", description=__doc__.split("\n\n")[0])
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
