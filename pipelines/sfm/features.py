"""Stage ``features``: SIFT features of every working image into a COLMAP database.

Stages talk through files, like COLMAP itself: this stage writes ``<work_dir>/database.db``,
:mod:`pipelines.sfm.matching` adds verified matches to it, :mod:`pipelines.sfm.mapping` maps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ReconstructionFailed
from pipelines.files import atomic_path
from pipelines.ingest import IngestedPhoto, IngestResult
from pipelines.options import SfmOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.sfm.colmap import colmap_cancellable, route_colmap_log, timed_batches

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)

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


def extract_features(
    ing: IngestResult, work_dir: Path, options: SfmOptions, progress: StageProgress, cancel: CancelToken
) -> FeaturesResult:
    """SIFT features of every working image into ``work_dir/database.db`` (rebuilt from scratch).

    Photos from one device share one COLMAP camera (COLMAP's SINGLE mode); different devices get
    one camera each. EXIF focal lengths become the cameras' focal priors. Photos where SIFT finds
    few features (low contrast: fog, white walls, dim light) are extracted again with a lower
    detection threshold. Progress and cancellation happen between extraction calls.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    route_colmap_log(work_dir)
    database_path = work_dir / "database.db"
    database_path.unlink(missing_ok=True)
    with atomic_path(database_path) as partial:
        groups, keypoints = _extract_all(ing, partial, options, progress, cancel)
    return FeaturesResult(
        database_path=database_path,
        images_dir=ing.images_dir,
        work_dir=work_dir,
        image_names=[p.name for p in ing.photos],
        gps={p.name: p.gps for p in ing.photos if p.gps is not None},
        num_cameras=len(groups),
        keypoints={p.name: keypoints[p.name] for p in ing.photos},
    )


def _extract_all(
    ing: IngestResult, partial: Path, options: SfmOptions, progress: StageProgress, cancel: CancelToken
) -> tuple[list[list[IngestedPhoto]], dict[str, int]]:
    """Cameras and features of every photo into the database ``partial``; returns (camera groups, keypoints per image)."""
    import pycolmap

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
            raise ReconstructionFailed("features", f"COLMAP could not read {', '.join(missing)}; see the colmap.log file in {partial.parent}")
        todo = [p for p in todo if keypoints[p.name] < few]
        if not todo:
            break
    if todo:
        logger.warning("photos with few features even at a low threshold (blurry, dark or plain): %s", ", ".join(p.name for p in todo))
    progress(1.0, f"features of {total} photos")
    return groups, keypoints


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
            with colmap_cancellable(cancel) as token:
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

        for batch_done in timed_batches(group, extract, first=max(2, os.cpu_count() or 2), cancel=cancel):
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
