"""Features, matching and sparse reconstruction on rendered photos with exact ground-truth cameras.

The expensive part (ingest + SIFT on tabletop_small, ~5 s) runs once per module; each test that
matches or maps works on its own copy of the feature database.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from fixtures.groundtruth import load_cameras
from fixtures.scenes import make_scene
from pipelines import ingest, sfm
from pipelines.errors import Cancelled, ReconstructionFailed
from pipelines.geometry import umeyama
from pipelines.options import IngestOptions, SfmOptions
from pipelines.progress import CancelToken, no_progress
from pipelines.sfm.colmap import route_colmap_log

OPTIONS = SfmOptions()


@pytest.fixture(scope="module")
def small_scene() -> Path:
    return make_scene("tabletop_small")


@pytest.fixture(scope="module")
def small_features(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> sfm.FeaturesResult:
    work = tmp_path_factory.mktemp("small")
    ing = ingest.run(small_scene / "images", work / "images", IngestOptions(), no_progress, CancelToken())
    return sfm.extract_features(ing, work / "sfm", OPTIONS, no_progress, CancelToken())


def copy_features(feats: sfm.FeaturesResult, work: Path) -> sfm.FeaturesResult:
    """The same features in a fresh work folder, so a test can match/map without touching the shared one."""
    work.mkdir(parents=True)
    shutil.copy(feats.database_path, work / "database.db")
    return dataclasses.replace(feats, database_path=work / "database.db", work_dir=work)


@pytest.fixture(scope="module")
def small_matches(small_features: sfm.FeaturesResult, tmp_path_factory: pytest.TempPathFactory) -> sfm.MatchesResult:
    feats = copy_features(small_features, tmp_path_factory.mktemp("small_matches") / "sfm")
    return sfm.match_features(feats, OPTIONS, no_progress, CancelToken())


def camera_position_errors(sparse: sfm.SparseResult, scene: Path) -> tuple[np.ndarray, float]:
    """Per-photo distance (m) between the aligned SfM camera centres and the true ones, and the ring radius (m)."""
    rec = sparse.load()
    estimated = {rec.image(i).name: rec.image(i).projection_center() for i in rec.reg_image_ids()}
    truth = {c.name: c.center for c in load_cameras(scene) if c.name in estimated}
    names = sorted(truth)
    src = np.array([estimated[n] for n in names])
    dst = np.array([truth[n] for n in names])
    s, rot, t = umeyama(src, dst)
    errors = np.linalg.norm((s * src @ rot.T + t) - dst, axis=1)
    radius = float(np.median(np.linalg.norm(dst[:, :2] - dst[:, :2].mean(0), axis=1)))
    return errors, radius


def cancel_after(seconds: float, cancel: CancelToken) -> list[float]:
    """Cancel from a timer thread; the returned list receives the monotonic time of the cancel."""
    when: list[float] = []

    def fire() -> None:
        when.append(time.monotonic())
        cancel.cancel()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return when


def test_features_share_one_camera_with_the_exif_focal_prior(small_features: sfm.FeaturesResult) -> None:
    assert small_features.num_cameras == 1
    assert min(small_features.keypoints.values()) > 1000
    db = pycolmap.Database.open(str(small_features.database_path))
    try:
        (camera,) = db.read_all_cameras()
        assert camera.has_prior_focal_length
        assert camera.focal_length == pytest.approx(30 / math.hypot(36, 24) * 800, rel=1e-6)  # EXIF 30 mm equiv.
        assert db.num_images() == 12
    finally:
        db.close()


def test_tabletop_small_registers_every_photo_where_the_true_cameras_are(
    small_scene: Path, small_matches: sfm.MatchesResult, tmp_path: Path
) -> None:
    seen: list[float] = []
    sparse = sfm.reconstruct_sparse(small_matches, tmp_path / "sparse", OPTIONS, lambda f, m: seen.append(f), CancelToken())

    assert small_matches.pairing == "exhaustive" and small_matches.num_pairs == 66
    assert len(sparse.registered) == 12 and sparse.unregistered == []
    assert sparse.mean_reprojection_error_px < 1.5
    assert sparse.num_points3d > 300
    errors, radius = camera_position_errors(sparse, small_scene)
    assert np.median(errors) < 0.01 * radius and errors.max() < 0.03 * radius, (errors, radius)
    rec = sparse.load()
    assert rec.num_reg_images() == 12 and all((sparse.images_dir / rec.image(i).name).is_file() for i in rec.reg_image_ids())
    assert sorted(p.name for p in sparse.sparse_dir.iterdir()) == ["cameras.bin", "frames.bin", "images.bin", "points3D.bin", "rigs.bin"]
    assert seen == sorted(seen) and len(seen) >= 10
    assert sparse.summary()["registered"] == 12


def test_sequential_pairing_with_wraparound_also_places_every_photo(
    small_scene: Path, small_features: sfm.FeaturesResult, tmp_path: Path
) -> None:
    options = SfmOptions(exhaustive_max_photos=3, sequential_overlap=2)
    feats = copy_features(small_features, tmp_path / "sfm")

    matches = sfm.match_features(feats, options, no_progress, CancelToken())
    sparse = sfm.reconstruct_sparse(matches, tmp_path / "sparse", options, no_progress, CancelToken())

    assert matches.pairing == "sequential" and matches.num_pairs < 66
    assert len(sparse.registered) == 12
    errors, radius = camera_position_errors(sparse, small_scene)
    assert np.median(errors) < 0.02 * radius


def test_global_mapper_places_every_photo(small_scene: Path, small_matches: sfm.MatchesResult, tmp_path: Path) -> None:
    matches = dataclasses.replace(small_matches, work_dir=tmp_path)
    sparse = sfm.reconstruct_sparse(matches, tmp_path / "sparse", SfmOptions(mapper="global"), no_progress, CancelToken())

    assert sparse.mapper == "global" and len(sparse.registered) == 12
    assert sparse.mean_reprojection_error_px < 1.5
    errors, radius = camera_position_errors(sparse, small_scene)
    assert np.median(errors) < 0.02 * radius


def test_photos_from_two_devices_get_two_cameras_and_colmap_logs_to_a_file(
    small_scene: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ing = ingest.run(small_scene / "images", tmp_path / "images", IngestOptions(), no_progress, CancelToken())
    photos = [dataclasses.replace(p, make="Apple" if i % 2 else "Google", focal_px=None if i % 2 else p.focal_px) for i, p in enumerate(ing.photos[:4])]
    capfd.readouterr()
    feats = sfm.extract_features(dataclasses.replace(ing, photos=photos), tmp_path / "sfm", OPTIONS, no_progress, CancelToken())

    assert capfd.readouterr() == ("", "")  # COLMAP's chatter went to the log file, not stdout/stderr
    assert len(list((tmp_path / "sfm").glob("colmap.log.*"))) == 1  # glog buffers its lines, so only its existence is checked

    assert feats.num_cameras == 2 and sorted(feats.keypoints) == [p.name for p in photos]
    db = pycolmap.Database.open(str(feats.database_path))
    try:
        priors = sorted(c.has_prior_focal_length for c in db.read_all_cameras())
        by_image = {img.name: img.camera_id for img in db.read_all_images()}
    finally:
        db.close()
    assert priors == [False, True]
    assert by_image[photos[0].name] == by_image[photos[2].name] != by_image[photos[1].name] == by_image[photos[3].name]


def test_low_contrast_photos_are_extracted_again_with_a_lower_threshold(small_scene: Path, tmp_path: Path) -> None:
    """Contrast cut to 8% (fog, a white wall): SIFT's default threshold finds almost nothing."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((small_scene / "images").iterdir())[:3]:
        pixels = np.asarray(Image.open(source), dtype=np.float32)
        flat = pixels.mean() + 0.08 * (pixels - pixels.mean())
        Image.fromarray(flat.round().astype(np.uint8)).save(photos / source.name, quality=95)
    ing = ingest.run(photos, tmp_path / "images", IngestOptions(), no_progress, CancelToken())
    grey = np.asarray(Image.open(ing.images_dir / ing.photos[0].name).convert("L"))
    route_colmap_log(tmp_path)  # keep glog's file out of /tmp
    default_sift = pycolmap.FeatureExtractor.create(pycolmap.FeatureExtractionOptions(), device=pycolmap.Device.cpu)
    assert len(default_sift.extract_from_uint8_array(grey)[0]) < 1024  # what one pass would have found

    feats = sfm.extract_features(ing, tmp_path / "sfm", OPTIONS, no_progress, CancelToken())

    assert min(feats.keypoints.values()) >= OPTIONS.max_features // 8


def assert_cancel_stops_within_5s(run: Callable[[CancelToken], object], after_s: float) -> None:
    cancel = CancelToken()
    when = cancel_after(after_s, cancel)
    with pytest.raises(Cancelled):
        run(cancel)
    stopped = time.monotonic()
    assert when, "the stage finished before the cancel fired; nothing was tested"
    assert stopped - when[0] < 5.0


def test_cancel_during_feature_extraction_stops_within_5s(small_scene: Path, tmp_path: Path) -> None:
    ing = ingest.run(small_scene / "images", tmp_path / "images", IngestOptions(), no_progress, CancelToken())
    assert_cancel_stops_within_5s(lambda c: sfm.extract_features(ing, tmp_path / "sfm", OPTIONS, no_progress, c), 0.3)
    assert not (tmp_path / "sfm" / "database.db").exists()  # only the partial database was written


def test_cancel_during_matching_stops_within_5s(small_features: sfm.FeaturesResult, tmp_path: Path) -> None:
    feats = copy_features(small_features, tmp_path / "sfm")
    assert_cancel_stops_within_5s(lambda c: sfm.match_features(feats, OPTIONS, no_progress, c), 0.5)


def test_cancel_during_incremental_mapping_stops_it(small_matches: sfm.MatchesResult, tmp_path: Path) -> None:
    """Mapping 12 photos takes well under a second, so the cancel comes from the progress callback."""
    matches = dataclasses.replace(small_matches, work_dir=tmp_path)
    cancel = CancelToken()
    messages: list[str] = []

    def progress(fraction: float, message: str) -> None:
        messages.append(message)
        if message.startswith("placed 4/"):
            cancel.cancel()

    with pytest.raises(Cancelled):
        sfm.reconstruct_sparse(matches, tmp_path / "sparse", OPTIONS, progress, cancel)
    assert "placed 4/12 photos" in messages and not any(m.startswith("placed 12/") for m in messages)
    assert not (tmp_path / "sparse").exists()


def test_cancel_kills_the_global_mapper_child(small_matches: sfm.MatchesResult, tmp_path: Path) -> None:
    matches = dataclasses.replace(small_matches, work_dir=tmp_path)
    cancel = CancelToken()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        sfm.reconstruct_sparse(matches, tmp_path / "sparse", SfmOptions(mapper="global"), lambda f, m: cancel.cancel(), cancel)
    assert time.monotonic() - started < 5.0
    assert not (tmp_path / "sparse").exists()


def test_disjoint_photos_are_named_unregistered_and_the_ring_reconstructs(tmp_path: Path) -> None:
    scene = make_scene("disjoint")
    small = IngestOptions(max_image_size=320)  # 18 photos at 320x240 (~1700 features each): 3x faster, same outcome
    ing = ingest.run(scene / "images", tmp_path / "images", small, no_progress, CancelToken())
    feats = sfm.extract_features(ing, tmp_path / "sfm", OPTIONS, no_progress, CancelToken())
    matches = sfm.match_features(feats, OPTIONS, no_progress, CancelToken())
    stray = sorted(p.name for p in ing.photos if p.source.startswith("stray"))

    sparse = sfm.reconstruct_sparse(matches, tmp_path / "sparse", OPTIONS, no_progress, CancelToken())

    assert len(stray) == 4 and sorted(sparse.unregistered) == stray
    assert len(sparse.registered) == len(ing.photos) - 4
    with pytest.raises(ReconstructionFailed) as err:
        sfm.reconstruct_sparse(matches, tmp_path / "sparse2", SfmOptions(min_registered_fraction=0.9), no_progress, CancelToken())
    assert err.value.stage == "sparse"
    assert err.value.message.startswith(f"only {len(sparse.registered)} of {len(ing.photos)} photos could be placed: take more overlapping photos")
    assert all(name in err.value.message for name in stray)


def test_sequential_pairs_are_linear_in_the_number_of_photos_and_close_the_loop() -> None:
    names = [f"IMG_{i:04d}.jpg" for i in range(200)]
    pairs = sfm.sequential_pairs(names, overlap=5)

    assert len(pairs) == len(set(pairs)) and all(a < b for a, b in pairs)
    assert len(pairs) < 200 * (5 + 8)
    assert ("IMG_0000.jpg", "IMG_0001.jpg") in pairs and ("IMG_0000.jpg", "IMG_0006.jpg") not in pairs
    assert ("IMG_0000.jpg", "IMG_0008.jpg") in pairs and ("IMG_0000.jpg", "IMG_0128.jpg") in pairs  # log-spaced links
    # wrap-around: photos at most 5 apart around the loop
    assert ("IMG_0000.jpg", "IMG_0199.jpg") in pairs and ("IMG_0003.jpg", "IMG_0198.jpg") in pairs
    assert ("IMG_0003.jpg", "IMG_0197.jpg") not in pairs and ("IMG_0005.jpg", "IMG_0199.jpg") not in pairs


def test_spatial_pairs_join_gps_neighbours_only() -> None:
    # Photos 10 m apart along a street (1e-4 deg latitude = 11.1 m), and one 5 km away.
    gps = {f"p{i}.jpg": (48.0 + i * 1e-4, 2.0, 35.0) for i in range(6)}
    gps["far.jpg"] = (48.05, 2.0, 35.0)

    pairs = sfm.spatial_pairs(gps, neighbours=2, max_distance_m=50.0)

    assert ("p0.jpg", "p1.jpg") in pairs and ("p0.jpg", "p2.jpg") in pairs and ("p0.jpg", "p5.jpg") not in pairs
    assert not any("far.jpg" in p for p in pairs)


def test_principal_point_is_refined_where_the_photos_pin_it_and_the_cameras_turn_closer_to_the_truth(tmp_path: Path) -> None:
    """hard_small's lens sits 7.5 px off-centre with k1 = +0.05: holding the principal point at the centre
    turns every camera; refining it after mapping lowers the reprojection and rotation errors, and says so."""
    from pipelines.evaluate import evaluate

    scene = make_scene("hard_small")
    ing = ingest.run(scene / "images", tmp_path / "images", IngestOptions(), no_progress, CancelToken())
    feats = sfm.extract_features(ing, tmp_path / "sfm", OPTIONS, no_progress, CancelToken())
    matches = sfm.match_features(feats, OPTIONS, no_progress, CancelToken())
    results, rotation = {}, {}
    for name, options in {"fixed": dataclasses.replace(OPTIONS, refine_principal_point=False), "refined": OPTIONS,
                          "too_few": dataclasses.replace(OPTIONS, principal_point_min_photos=100)}.items():  # fmt: skip
        results[name] = sfm.reconstruct_sparse(matches, tmp_path / name / "sparse", options, no_progress, CancelToken())
        rotation[name] = evaluate(tmp_path / name, scene).rotation_error_median_deg
    camera = results["refined"].intrinsics["cameras"][0]
    assert camera["principal_point_refined"] and camera["reason"].startswith("refined")
    truth = load_cameras(scene)[0].K
    before, after = np.array(camera["params_before"][1:3]), np.array(camera["params_after"][1:3])
    assert np.linalg.norm(after - truth[:2, 2]) < 0.6 * np.linalg.norm(before - truth[:2, 2])  # moved most of the way to the truth
    assert results["refined"].intrinsics["reprojection_error_after_px"] < results["refined"].intrinsics["reprojection_error_before_px"]
    assert rotation["refined"] < 0.8 * rotation["fixed"]
    for name, says in (("fixed", "refinement is off"), ("too_few", "12 photos of this camera, 100 needed")):
        kept = results[name].intrinsics["cameras"][0]
        assert not kept["principal_point_refined"] and says in kept["reason"] and kept["params_after"][1:3] == [320.0, 240.0]
    assert rotation["too_few"] == pytest.approx(rotation["fixed"], abs=0.05)
