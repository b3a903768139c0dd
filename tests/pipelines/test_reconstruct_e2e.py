"""The real pipeline end to end on the committed 12-photo scene, through the `recon` CLI.

One run (balanced preset) is shared by every test in this module; each test checks one promise
of the product: every photo placed, a surface close to the ground truth, a textured GLB that is
Y-up and centred, and a report that agrees with the artifacts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.scenes import scene_dir

pytestmark = pytest.mark.slow

SCENE = scene_dir("tabletop_small")
RECON = str(Path(sys.executable).with_name("recon"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "out"
    done = subprocess.run(
        [RECON, "run", str(SCENE / "images"), "--out", str(out), "--preset", "balanced", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def evaluation(run_dir: Path) -> dict[str, Any]:
    done = subprocess.run(
        [RECON, "eval", str(run_dir), "--gt", str(SCENE), "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "eval.json").is_file()
    return json.loads(done.stdout)


def _fscore(evaluation: dict[str, Any], tau: float) -> float:
    return next(s["fscore"] for s in evaluation["surface"] if abs(s["tau_fraction"] - tau) < 1e-9)


def test_every_photo_is_registered_and_cameras_match_ground_truth(report: dict, evaluation: dict) -> None:
    assert report["sparse"]["registered"] == 12
    assert report["sparse"]["unregistered"] == []
    assert evaluation["photos_registered"] == evaluation["photos_total"] == 12
    assert evaluation["position_error_median_pct"] < 0.5
    assert evaluation["rotation_error_median_deg"] < 0.5


def test_surface_is_close_to_ground_truth(evaluation: dict) -> None:
    # Measured 0.94 at 1% and 0.91 at 0.5% (2026-11-25); a pipeline with a broken stage
    # (no dense points, a shifted or mis-scaled model, a blob mesh) cannot reach these.
    assert _fscore(evaluation, 0.01) >= 0.85
    assert _fscore(evaluation, 0.005) >= 0.75
    assert evaluation["accuracy_mean_m"] < 0.01


def test_glb_is_textured_upright_and_centred(run_dir: Path, report: dict, evaluation: dict) -> None:
    import trimesh

    scene = trimesh.load(run_dir / "model.glb")
    meshes = list(scene.geometry.values()) if isinstance(scene, trimesh.Scene) else [scene]
    mesh = meshes[0]
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    image = mesh.visual.material.baseColorTexture
    assert image is not None and image.size[0] == report["options"]["texture.texture_size"]
    vertices = scene.dump(concatenate=True).vertices if isinstance(scene, trimesh.Scene) else mesh.vertices
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    extent = float(np.linalg.norm(hi - lo))
    assert abs(lo[1]) < 1e-3 * extent, "the model must stand on y = 0"
    assert abs((lo[0] + hi[0]) / 2) < 1e-3 * extent and abs((lo[2] + hi[2]) / 2) < 1e-3 * extent, "x/z centred"
    # glTF's +Y must be the world's up: map the model's +Y into the ground-truth frame (Z up).
    gt_from_model = np.asarray(evaluation["gt_from_sfm"]) @ np.asarray(report["export"]["sfm_from_model"])
    up = gt_from_model[:3, :3] @ np.array([0.0, 1.0, 0.0])
    angle = np.degrees(np.arccos(np.clip(up[2] / np.linalg.norm(up), -1, 1)))
    assert angle < 3.0, f"model +Y is {angle:.1f}° from the true up direction"


def test_report_agrees_with_the_artifacts(run_dir: Path, report: dict) -> None:
    import pycolmap
    import trimesh

    assert set(report["seconds"]) == {"ingest", "features", "matching", "sparse", "dense", "mesh", "texture", "export"}
    assert report["simulated"] is False
    assert report["ingest"]["photos_used"] == 12 and report["ingest"]["skipped"] == []
    model = pycolmap.Reconstruction(run_dir / "sparse")
    assert model.num_reg_images() == report["sparse"]["registered"]
    assert model.num_points3D() == report["sparse"]["points3d"]
    assert 0 < report["sparse"]["mean_reprojection_error_px"] < 1.0
    points = trimesh.load(run_dir / "points.ply")
    assert len(points.vertices) == report["dense"]["num_points"] > 10_000
    assert 0 < report["mesh"]["faces"] <= report["options"]["mesh.max_faces"]
    assert report["texture"]["textured"] is True
    assert (run_dir / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob("*.tmp")), "no temporary files are left beside the artifacts"


def test_a_failed_texture_bake_completes_with_vertex_colours_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baking crashes: the run still delivers a (vertex-coloured) model, and its result and report say why."""
    import trimesh

    from pipelines.options import build_options
    from pipelines.run import reconstruct
    from pipelines.texture import bake

    def broken_bake(*args: object, **kwargs: object) -> None:
        raise RuntimeError("atlas exploded")

    monkeypatch.setattr(bake, "_bake", broken_bake)
    result = reconstruct(SCENE / "images", tmp_path / "out", build_options("preview"))
    assert result.warnings == ["completed without texture: texture baking failed: RuntimeError: atlas exploded"]
    assert json.loads(result.report_path.read_text())["warnings"] == result.warnings
    mesh = trimesh.load(result.model_path, force="mesh")
    assert mesh.visual.kind == "vertex" and len(mesh.faces) > 1000


def test_the_model_rendered_from_the_cameras_matches_the_photos_and_a_wrong_pose_scores_worse(run_dir: Path) -> None:
    """The metric that needs no ground truth: PSNR/SSIM of renderings against the photos, and that it can fail."""
    from pipelines import photometric
    from pipelines.views import ColmapView, load_views

    done = subprocess.run([RECON, "eval", str(run_dir), "--photometric", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    score = json.loads(done.stdout)["photometric"]
    assert score["mode"] == "fit" and score["photos"] == 12
    assert score["psnr_db_median"] > 24 and score["ssim_median"] > 0.75 and 0.5 < score["coverage_median"] < 1.0
    assert json.loads((run_dir / "eval.json").read_text())["photometric"] == score

    model = photometric.load_model(run_dir)
    view = load_views(run_dir / "sparse", "eval")[0]
    a = math.radians(1.0)  # turn the camera by 1 degree about its vertical axis
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    moved = ColmapView(view.name, view.camera, turn @ view.R, turn @ view.t, view.width, view.height)
    right = photometric.score_view(model, view, run_dir / "work" / "images" / view.name)
    wrong = photometric.score_view(model, moved, run_dir / "work" / "images" / view.name)
    assert wrong.psnr_db < right.psnr_db - 3 and wrong.ssim < right.ssim - 0.1


def test_held_out_photos_are_scored_at_their_poses_from_the_full_run(run_dir: Path, tmp_path: Path) -> None:
    """A run without two photos, scored on those two at the poses the full run found for them."""
    subset = tmp_path / "subset"
    subset.mkdir()
    left_out = ["photo_003.jpg", "photo_009.jpg"]
    for photo in sorted((SCENE / "images").iterdir()):
        if photo.name not in left_out:
            (subset / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "held_out"
    smaller = ["--texture.texture_size", "1024", "--mesh.poisson_depth", "8"]  # balanced matching (preview places too few of 10 photos), a quicker surface
    done = subprocess.run([RECON, "run", str(subset), "--out", str(out), "--preset", "balanced", *smaller], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([RECON, "eval", str(out), "--held-out-from", str(run_dir), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    score = json.loads(done.stdout)["held_out"]
    assert [v["name"] for v in score["per_photo"]] == left_out
    assert score["psnr_db_median"] > 20 and score["ssim_median"] > 0.6 and score["coverage_median"] > 0.5
    same = subprocess.run([RECON, "eval", str(run_dir), "--held-out-from", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert same.returncode == 3 and "nothing was held out" in same.stderr
    nothing = subprocess.run([RECON, "eval", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "--photometric" in nothing.stderr
