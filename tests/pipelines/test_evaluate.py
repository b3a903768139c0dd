"""Evaluation against ground truth, on run-output folders built from the ground truth itself.

The folders here are test fixtures with *known* errors (a known similarity, a shifted surface,
missing photos, one misplaced camera), so each metric can be checked against the value it must give.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.groundtruth import load_crop, load_mesh
from fixtures.scenes import make_scene
from pipelines.evaluate import EvalResult, evaluate, write
from pipelines.geometry import robust_similarity, umeyama
from tests.fixtures.fake_runs import fake_run as _fake_run
from tests.fixtures.fake_runs import random_similarity as _random_similarity

SAMPLES = 100_000


@pytest.fixture(scope="module")
def gt() -> Path:
    return make_scene("tabletop_small")


def test_umeyama_recovers_a_known_similarity_exactly() -> None:
    s, r, t = _random_similarity(3)
    src = np.random.default_rng(0).normal(size=(10, 3))
    s2, r2, t2 = umeyama(src, s * src @ r.T + t)
    assert s2 == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(r2, r, atol=1e-9)
    np.testing.assert_allclose(t2, t, atol=1e-9)


def test_robust_similarity_ignores_a_gross_outlier() -> None:
    s, r, t = _random_similarity(4)
    src = np.random.default_rng(1).normal(size=(12, 3))
    dst = s * src @ r.T + t
    dst[5] += 10.0
    m, inliers = robust_similarity(src, dst, threshold=0.05)
    assert not inliers[5] and inliers.sum() == 11
    np.testing.assert_allclose(m[:3, :3], s * r, atol=1e-9)


def test_ground_truth_against_itself_in_another_frame_scores_perfectly(gt: Path, tmp_path: Path) -> None:
    sim = _random_similarity(7)
    result = evaluate(_fake_run(tmp_path / "out", gt, sim), gt, n_samples=SAMPLES)
    assert (result.photos_registered, result.photos_total, result.photos_missing) == (12, 12, [])
    assert result.alignment_scale == pytest.approx(1 / sim[0], rel=1e-9)
    assert result.position_error_max_m < 1e-9 and result.rotation_error_max_deg < 1e-5
    f1, f05 = result.surface
    assert f1.tau_fraction == 0.01 and f1.precision > 0.99 and f1.recall > 0.99
    assert f05.fscore > 0.97
    assert result.accuracy_mean_m < 1e-5 and result.completeness_mean_m < 1e-5  # float32 rounding only
    assert result.mesh_note == "sfm_from_model from report.json"


def test_shifted_surface_loses_fscore_in_proportion_to_the_shift(gt: Path, tmp_path: Path) -> None:
    diag = load_crop(gt).diagonal
    up = np.array([0.0, 0.0, 1.0])
    sim = _random_similarity(8)
    scores = {}
    for frac in (0.0, 0.0075, 0.02):
        result = evaluate(_fake_run(tmp_path / f"shift{frac}", gt, sim, mesh_offset_m=frac * diag * up), gt, n_samples=SAMPLES)
        scores[frac] = (result.fscore(0.01), result.fscore(0.005))
    # A 0.75 % lift is inside tau = 1 % but outside 0.5 % for the ground and the tops; a 2 % lift
    # is outside both for them (the vertical sides slide along themselves and stay close).
    assert scores[0.0][0] > 0.99
    assert scores[0.0075][0] > 0.9 and scores[0.0075][1] < 0.6
    assert scores[0.02][0] < 0.6
    assert scores[0.0][1] > scores[0.0075][1] > scores[0.02][1]


def test_reconstruction_missing_the_objects_has_high_precision_and_low_recall(gt: Path, tmp_path: Path) -> None:
    mesh = load_mesh(gt)
    tri_z = np.asarray(mesh.vertices)[np.asarray(mesh.triangles)][:, :, 2]
    ground_only = np.all(np.abs(tri_z) < 1e-9, axis=1)
    result = evaluate(_fake_run(tmp_path / "out", gt, _random_similarity(9), keep_triangles=ground_only), gt, n_samples=SAMPLES)
    f1 = result.surface[0]
    assert f1.precision > 0.99
    assert 0.2 < f1.recall < 0.8


def test_missing_photos_are_named_and_a_misplaced_camera_is_measured(gt: Path, tmp_path: Path) -> None:
    delta = np.array([0.0, 0.12, 0.05])  # 13 cm
    run = _fake_run(tmp_path / "out", gt, _random_similarity(10), drop_images=("photo_003.jpg", "photo_007.jpg"), move_camera=("photo_005.jpg", delta))
    result = evaluate(run, gt, n_samples=20_000)
    assert result.photos_registered == 10 and result.photos_missing == ["photo_003.jpg", "photo_007.jpg"]
    assert result.alignment_inliers == 9  # the moved camera is an outlier and does not bend the fit
    assert result.per_photo["photo_005.jpg"]["position_error_m"] == pytest.approx(0.13, rel=1e-6)
    assert result.position_error_max_m == pytest.approx(0.13, rel=1e-6)
    assert result.position_error_median_m < 1e-9
    assert result.position_error_max_pct == pytest.approx(100 * 0.13 / result.crop_diagonal_m)


def test_too_few_placed_photos_give_counts_but_no_alignment(gt: Path, tmp_path: Path) -> None:
    drop = tuple(f"photo_{i:03d}.jpg" for i in range(10))
    result = evaluate(_fake_run(tmp_path / "out", gt, _random_similarity(11), drop_images=drop), gt)
    assert not result.aligned and result.photos_registered == 2 and len(result.photos_missing) == 10
    assert result.surface == [] and result.fscore() is None


def test_eval_json_round_trips(gt: Path, tmp_path: Path) -> None:
    result = evaluate(_fake_run(tmp_path / "out", gt, _random_similarity(12)), gt, n_samples=20_000)
    data = json.loads(write(result, tmp_path / "out" / "eval.json").read_text())
    assert data["photos_registered"] == 12 and data["surface"][0]["tau_fraction"] == 0.01
    assert isinstance(result, EvalResult) and data == json.loads(json.dumps(result.to_dict()))
