"""Meshing stage on a simulated fused cloud of the committed fixture scene, scored against ground truth."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from fixtures import groundtruth
from fixtures.scenes import make_scene
from pipelines import evaluate, mesh
from pipelines.errors import Cancelled, ReconstructionFailed
from pipelines.mesh import surface
from pipelines.options import build_options
from pipelines.progress import CancelToken, no_progress
from pipelines.views import load_views
from tests.pipelines.surface_inputs import GtSparse, SimulatedPoints, gt_sparse, simulated_dense_points

OPTIONS = replace(build_options("preview").mesh, max_faces=40_000)


@pytest.fixture(scope="module")
def scene() -> Path:
    return make_scene("tabletop_small")


@pytest.fixture(scope="module")
def inputs(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedPoints, GtSparse]:
    root = tmp_path_factory.mktemp("mesh_inputs")
    sparse = gt_sparse(scene, root / "sparse")
    points = simulated_dense_points(scene, root / "points.ply", stride=3, outlier_fraction=0.01, flip_fraction=0.3)
    return points, sparse


@pytest.fixture(scope="module")
def result(inputs: tuple[SimulatedPoints, GtSparse], tmp_path_factory: pytest.TempPathFactory) -> mesh.MeshResult:
    points, sparse = inputs
    reports: list[float] = []
    res = mesh.run(points, sparse, tmp_path_factory.mktemp("mesh"), OPTIONS, lambda f, m: reports.append(f), CancelToken())
    assert reports == sorted(reports) and reports[-1] == 1.0
    return res


def _mesh_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(path))
    return np.asarray(m.vertices), np.asarray(m.triangles), np.asarray(m.vertex_colors)


def test_mesh_matches_ground_truth_surface_within_the_crop(result: mesh.MeshResult, scene: Path) -> None:
    v, f, _ = _mesh_arrays(result.mesh_path)
    gt = groundtruth.load_mesh(scene)
    gv, gf = np.asarray(gt.vertices), np.asarray(gt.triangles)
    crop = groundtruth.load_crop(scene)
    rec_samples = evaluate.sample_in_crop(v, f, crop.min, crop.max, 40_000, seed=0)
    gt_samples = evaluate.sample_in_crop(gv, gf, crop.min, crop.max, 40_000, seed=1)
    d_rec = evaluate.distances_to_mesh(rec_samples, gv, gf)
    d_gt = evaluate.distances_to_mesh(gt_samples, v, f)
    [(precision, recall, fscore)], _, _ = evaluate.surface_scores(d_rec, d_gt, [0.01 * crop.diagonal])
    assert precision > 0.9 and recall > 0.9, (precision, recall)
    assert fscore > 0.93


def test_mesh_respects_the_face_budget_and_is_clean(result: mesh.MeshResult) -> None:
    v, f, _ = _mesh_arrays(result.mesh_path)
    assert 1000 < len(f) <= OPTIONS.max_faces
    assert (result.num_faces, result.num_vertices) == (len(f), len(v))
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])), "degenerate faces"
    assert len(np.unique(f)) == len(v), "unreferenced vertices"
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert uses.max() <= 2, "non-manifold edges"


def test_mesh_has_no_floating_pieces(result: mesh.MeshResult) -> None:
    """The 1 % scattered outliers make Poisson blobs; none may survive as separate pieces."""
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(result.mesh_path))
    _, _, areas = m.cluster_connected_triangles()
    areas = np.asarray(areas)
    assert np.all(areas >= OPTIONS.min_component_fraction * areas.max())
    assert result.removed_components > 0


def test_mesh_stays_in_the_region_the_photos_observe(result: mesh.MeshResult, inputs: tuple[SimulatedPoints, GtSparse]) -> None:
    v, _, _ = _mesh_arrays(result.mesh_path)
    views = load_views(inputs[1].sparse_dir, "test")
    seen = np.zeros(len(v), dtype=bool)
    for view in views:
        uv, depth = view.project(v)
        seen |= view.in_image(uv) & (depth > 0)
    assert seen.all()
    assert v[:, 2].min() > -0.05, "Poisson's closed surface below the ground was not trimmed"


def test_mesh_vertex_colours_come_from_the_nearest_points(result: mesh.MeshResult, inputs: tuple[SimulatedPoints, GtSparse]) -> None:
    import open3d as o3d
    from scipy.spatial import cKDTree

    v, _, colours = _mesh_arrays(result.mesh_path)
    pcd = o3d.io.read_point_cloud(str(inputs[0].points_path))
    _, idx = cKDTree(np.asarray(pcd.points)).query(v)
    error = np.abs(colours - np.asarray(pcd.colors)[idx]).mean(axis=1)
    assert np.median(error) < 0.08
    assert colours.std() > 0.05, "colours are flat"


def test_orientation_turns_flipped_normals_towards_the_cameras_that_see_them(scene: Path, inputs: tuple[SimulatedPoints, GtSparse], tmp_path: Path) -> None:
    clean = simulated_dense_points(scene, tmp_path / "clean.ply", stride=8, outlier_fraction=0.0, flip_fraction=0.0, depth_noise=0.0)
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(clean.points_path))
    xyz, normals = np.asarray(pcd.points), np.asarray(pcd.normals)
    rng = np.random.default_rng(3)
    flipped = rng.random(len(normals)) < 0.5
    keep, flip = surface._orient_towards_cameras(xyz, np.where(flipped[:, None], -normals, normals), load_views(inputs[1].sparse_dir, "test"), 0.01, CancelToken())
    wrong = flip != flipped
    assert keep.mean() > 0.95
    assert wrong[keep].mean() < 0.02


def test_too_few_points_fail_with_an_actionable_message(inputs: tuple[SimulatedPoints, GtSparse], tmp_path: Path) -> None:
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(inputs[0].points_path))
    o3d.io.write_point_cloud(str(tmp_path / "few.ply"), pcd.select_by_index(list(range(500))))
    with pytest.raises(ReconstructionFailed) as err:
        mesh.run(SimulatedPoints(tmp_path / "few.ply", 500), inputs[1], tmp_path / "mesh", OPTIONS, no_progress, CancelToken())
    assert err.value.stage == "mesh"
    assert "photos" in err.value.message


def test_cancel_during_poisson_stops_within_two_seconds(inputs: tuple[SimulatedPoints, GtSparse], tmp_path: Path) -> None:
    """Poisson runs in a child process that a cancel kills, so even a deep octree stops at once."""
    cancel = CancelToken()
    started = threading.Event()

    def progress(fraction: float, message: str) -> None:
        if "Poisson" in message:
            started.set()

    deep = replace(OPTIONS, poisson_depth=11)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            mesh.run(inputs[0], inputs[1], tmp_path / "mesh", deep, progress, cancel)
        except Cancelled as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    before = {c.pid for c in psutil.Process().children()}  # other tests' servers may run beside us
    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(60)
    job = tmp_path / "mesh" / "poisson_in.npz"  # written just before the child starts Poisson
    deadline = time.monotonic() + 60
    while not job.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled_at = time.monotonic()
    cancel.cancel()
    thread.join(30)
    assert isinstance(outcome.get("error"), Cancelled)
    assert float(outcome["at"]) - cancelled_at < 2.0  # type: ignore[arg-type]
    assert not (tmp_path / "mesh" / "mesh.ply").exists()
    assert [c for c in psutil.Process().children() if c.pid not in before] == [], "the Poisson child outlived the cancel"


def test_region_of_interest_keeps_the_subject_and_drops_the_far_background(scene: Path, inputs: tuple[SimulatedPoints, GtSparse]) -> None:
    """Photos taken around the objects: the ground far beyond the cameras is background."""
    import open3d as o3d

    xyz = np.asarray(o3d.io.read_point_cloud(str(inputs[0].points_path)).points)
    rng = np.random.default_rng(0)
    angle, radius = rng.uniform(0, 2 * np.pi, 20_000), rng.uniform(2.6, 3.0, 20_000)
    far_ground = np.stack([radius * np.cos(angle), radius * np.sin(angle), np.zeros_like(angle)], axis=1)
    keep = surface._region_of_interest(np.concatenate([xyz, far_ground]), load_views(inputs[1].sparse_dir, "test"), OPTIONS.background_depth_factor)
    crop = groundtruth.load_crop(scene)
    subject = crop.contains(xyz)
    assert keep[: len(xyz)][subject].mean() > 0.999
    assert keep[len(xyz) :].mean() < 0.01
