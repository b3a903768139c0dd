"""Dense stage on the rendered tabletop_small scene with its exact cameras (no SfM in the loop).

Accuracy is measured against the ground-truth mesh inside the crop box, in metres; tau is 1 % of
the crop diagonal (~2.1 cm), the pipeline's F-score threshold. Measured on this scene with the
balanced preset: ~100 % of points within tau (99.6 % within tau/2, median 1.1 mm), recall 0.87,
normals' median error 9 degrees. The bounds below leave room for platform noise but not for a
half-pixel convention slip, a wrong pose inversion, or unfiltered depth maps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from fixtures import groundtruth
from fixtures.scenes import make_scene
from pipelines import dense
from pipelines.dense.views import plan_views, prepare_views
from pipelines.errors import Cancelled, InvalidOptions, ReconstructionFailed
from pipelines.evaluate import distances_to_mesh, sample_in_crop
from pipelines.options import build_options
from pipelines.progress import CancelToken, no_progress


@dataclass(frozen=True)
class Sparse:
    """The two attributes dense.run reads from the SfM result."""

    sparse_dir: Path
    images_dir: Path


@pytest.fixture(scope="module")
def scene() -> Path:
    return make_scene("tabletop_small")


def _sparse(scene: Path, out: Path, add_points: int) -> Sparse:
    out.mkdir(parents=True, exist_ok=True)
    groundtruth.to_colmap_reconstruction(scene, add_points=add_points).write(str(out))
    return Sparse(out, scene / "images")


@pytest.fixture(scope="module")
def gt_sparse(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Sparse:
    """Exact cameras plus 1500 exact surface points (as SfM would give, without its noise)."""
    return _sparse(scene, tmp_path_factory.mktemp("sparse"), add_points=1500)


@dataclass
class DenseRun:
    result: dense.DenseResult
    progress: list[tuple[float, str]]
    seconds: float


@pytest.fixture(scope="module")
def balanced_run(gt_sparse: Sparse, tmp_path_factory: pytest.TempPathFactory) -> DenseRun:
    out = tmp_path_factory.mktemp("dense")
    reports: list[tuple[float, str]] = []
    start = time.monotonic()
    result = dense.run(
        gt_sparse, out / "work", out / "points.ply", build_options("balanced").dense,
        lambda f, m: reports.append((f, m)), CancelToken(),
    )
    return DenseRun(result, reports, time.monotonic() - start)


def _cloud(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(path))
    return np.asarray(cloud.points), np.asarray(cloud.colors), np.asarray(cloud.normals)


def _in_crop(scene: Path, points: np.ndarray) -> np.ndarray:
    return groundtruth.load_crop(scene).contains(points)


def test_fused_points_lie_on_the_ground_truth_surface(scene: Path, balanced_run: DenseRun) -> None:
    points, _, _ = _cloud(balanced_run.result.points_path)
    mesh = groundtruth.load_mesh(scene)
    tau = 0.01 * groundtruth.load_crop(scene).diagonal
    inside = points[_in_crop(scene, points)]
    assert len(inside) > 20_000
    dist = distances_to_mesh(inside, np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    assert np.mean(dist < tau) >= 0.97
    assert np.mean(dist < tau / 4) >= 0.85  # ~5 mm: sub-pixel accurate, not merely "near"
    assert np.median(dist) < 0.004


def test_fused_points_cover_most_of_the_ground_truth_surface(scene: Path, balanced_run: DenseRun) -> None:
    from scipy.spatial import cKDTree

    points, _, _ = _cloud(balanced_run.result.points_path)
    mesh = groundtruth.load_mesh(scene)
    crop = groundtruth.load_crop(scene)
    samples = sample_in_crop(np.asarray(mesh.vertices), np.asarray(mesh.triangles), crop.min, crop.max, 20_000, seed=0)
    dist, _ = cKDTree(points).query(samples, k=1)
    assert np.mean(dist < 0.01 * crop.diagonal) >= 0.78


def test_normals_agree_with_the_ground_truth_and_face_the_cameras(scene: Path, balanced_run: DenseRun) -> None:
    import open3d as o3d

    points, _, normals = _cloud(balanced_run.result.points_path)
    keep = _in_crop(scene, points)
    points, normals = points[keep], normals[keep]
    mesh = groundtruth.load_mesh(scene)
    mesh.compute_triangle_normals()
    raycaster = o3d.t.geometry.RaycastingScene()
    raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    nearest = raycaster.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    gt_normals = np.asarray(mesh.triangle_normals)[nearest["primitive_ids"].numpy()]
    cos = np.einsum("ij,ij->i", normals, gt_normals)
    angles = np.degrees(np.arccos(np.clip(np.abs(cos), 0, 1)))
    assert np.median(angles) < 15.0
    assert np.mean(angles < 30.0) > 0.8
    # Oriented: the GT mesh's faces point outwards (toward the cameras), and so must ours.
    assert np.mean(cos > 0) > 0.95


def test_point_colours_come_from_the_photos(scene: Path, balanced_run: DenseRun) -> None:
    from PIL import Image

    points, colours, _ = _cloud(balanced_run.result.points_path)
    cam = groundtruth.load_cameras(scene)[0]
    uv, depth = cam.project(points)
    ui, vi = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    seen = (depth > 0) & (ui >= 0) & (ui < cam.width) & (vi >= 0) & (vi < cam.height)
    photo = np.asarray(Image.open(scene / "images" / cam.name).convert("RGB"), dtype=np.float64) / 255.0
    diff = np.abs(photo[vi[seen], ui[seen]] - colours[seen]).mean(axis=1)
    # Occluded points get another surface's colour; most points are seen and match to a few levels.
    assert np.median(diff) < 0.08
    shuffled = np.abs(photo[vi[seen], ui[seen]] - np.roll(colours[seen], 5000, axis=0)).mean(axis=1)
    assert np.median(shuffled) > 2 * np.median(diff)


def test_result_describes_the_run_and_progress_is_monotonic(balanced_run: DenseRun) -> None:
    result = balanced_run.result
    assert result.backend == "cpu_plane_sweep"
    assert result.num_depth_maps == 12
    assert result.image_size == (640, 480)
    assert result.used_sparse_points
    assert 10_000 < result.num_points == len(_cloud(result.points_path)[0])
    assert not list(result.points_path.parent.glob("*.tmp*"))
    summary = result.summary()
    assert summary["num_points"] == result.num_points and summary["views_without_sources"] == []
    assert 0 < summary["fused_fraction"] < 1
    assert all(len(v.sources) == 4 and v.fused_pixels > 0 for v in result.views)
    fractions = [f for f, _ in balanced_run.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(fractions) >= 10


def test_source_views_are_the_ring_neighbours(gt_sparse: Sparse, tmp_path: Path) -> None:
    import pycolmap

    rec = pycolmap.Reconstruction(str(gt_sparse.sparse_dir))
    views = prepare_views(rec, gt_sparse.images_dir, tmp_path, 320, no_progress, CancelToken())
    plans, used_points = plan_views(rec, views, 2)
    assert used_points
    n = len(views)
    for k, plan in enumerate(plans):
        # Photos are taken walking once around the objects: the best partners are the next ones.
        steps = sorted(min(abs(j - k), n - abs(j - k)) for j in plan.sources)
        assert steps == [1, 1], (k, plan.sources)
        assert 0.5 < plan.depth_min < 1.5 < 2.5 < plan.depth_max < 8.0


def test_cameras_without_sparse_points_still_give_an_accurate_cloud(scene: Path, tmp_path: Path) -> None:
    sparse = _sparse(scene, tmp_path / "sparse", add_points=0)
    result = dense.run(sparse, tmp_path / "work", tmp_path / "points.ply", build_options("preview").dense, no_progress, CancelToken())
    assert not result.used_sparse_points
    points, _, _ = _cloud(result.points_path)
    inside = points[_in_crop(scene, points)]
    mesh = groundtruth.load_mesh(scene)
    dist = distances_to_mesh(inside, np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    assert len(inside) > 5_000
    assert np.mean(dist < 0.01 * groundtruth.load_crop(scene).diagonal) >= 0.95


def test_undistorted_working_image_matches_a_pinhole_photo(scene: Path, tmp_path: Path) -> None:
    """A photo distorted with a SIMPLE_RADIAL camera comes back as the original pinhole photo."""
    import cv2
    import pycolmap

    cam = groundtruth.load_cameras(scene)[0]
    pinhole = cv2.imread(str(scene / "images" / cam.name))
    f, cx, cy, k = cam.K[0, 0], cam.K[0, 2], cam.K[1, 2], -0.12
    camera = pycolmap.Camera(camera_id=1, model="SIMPLE_RADIAL", width=cam.width, height=cam.height, params=[f, cx, cy, k])
    # Distorted photo: each of its pixels shows what the pinhole photo shows along the same ray.
    u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    rays = camera.cam_from_img(np.stack([u.ravel(), v.ravel()], axis=1))
    map_x = (f * rays[:, 0] + cx - 0.5).reshape(u.shape).astype(np.float32)
    map_y = (f * rays[:, 1] + cy - 0.5).reshape(u.shape).astype(np.float32)
    distorted = cv2.remap(pinhole, map_x, map_y, cv2.INTER_LINEAR)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "distorted.png"), distorted)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(camera)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="distorted.png", camera_id=1, image_id=1), pycolmap.Rigid3d())

    (view,) = prepare_views(rec, images, tmp_path / "work", 640, no_progress, CancelToken())
    working, valid = view.load()
    assert np.allclose(view.K, [[f, 0, cx - 0.5], [0, f, cy - 0.5], [0, 0, 1]])
    # Compare away from the image centre (where distortion is small) and the edges (content lost).
    radius = np.hypot(u - cx, v - cy) / np.hypot(cx, cy)
    ring = valid & (radius > 0.4) & (radius < 0.85)
    err = np.abs(working[..., ::-1].astype(float) - pinhole.astype(float)).mean(axis=2)
    before = np.abs(distorted.astype(float) - pinhole.astype(float)).mean(axis=2)
    assert np.median(err[ring]) < 4.0
    assert np.median(before[ring]) > 3 * np.median(err[ring])


def test_cancel_during_depth_maps_stops_within_5_seconds(gt_sparse: Sparse, tmp_path: Path) -> None:
    cancel = CancelToken()
    cancelled_at: list[float] = []

    def progress(fraction: float, message: str) -> None:
        if fraction > 0.1 and not cancelled_at:  # undistortion done, depth maps under way
            cancelled_at.append(time.monotonic())
            threading.Thread(target=cancel.cancel).start()

    options = build_options("balanced").dense
    with pytest.raises(Cancelled):
        dense.run(gt_sparse, tmp_path / "work", tmp_path / "points.ply", options, progress, cancel)
    assert cancelled_at and time.monotonic() - cancelled_at[0] < 5.0
    assert not (tmp_path / "points.ply").exists()


def test_photos_that_share_nothing_fail_with_a_clear_message(tmp_path: Path) -> None:
    import pycolmap

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="PINHOLE", width=320, height=240, params=[300, 300, 160, 120]))
    # Two cameras back to back: each looks where the other cannot see.
    for image_id, yaw in ((1, 0.0), (2, np.pi)):
        R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        name = f"photo_{image_id}.png"
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(images / name)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), np.zeros(3))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=image_id), pose)
    sparse_dir = tmp_path / "sparse"
    sparse_dir.mkdir()
    rec.write(str(sparse_dir))
    with pytest.raises(ReconstructionFailed, match="overlap") as info:
        dense.run(Sparse(sparse_dir, images), tmp_path / "work", tmp_path / "points.ply", build_options().dense, no_progress, CancelToken())
    assert info.value.stage == "dense"


def test_a_single_placed_photo_fails_with_a_clear_message(scene: Path, tmp_path: Path) -> None:
    import pycolmap

    rec = groundtruth.to_colmap_reconstruction(scene)
    for image_id in list(rec.reg_image_ids())[1:]:
        rec.deregister_frame(rec.image(image_id).frame_id)
    rec.write(str(tmp_path))
    assert pycolmap.Reconstruction(str(tmp_path)).num_reg_images() == 1
    with pytest.raises(ReconstructionFailed, match="at least 2"):
        dense.run(Sparse(tmp_path, scene / "images"), tmp_path / "work", tmp_path / "points.ply", build_options().dense, no_progress, CancelToken())


def test_cuda_backend_without_cuda_is_an_invalid_option(gt_sparse: Sparse, tmp_path: Path) -> None:
    import pycolmap

    if pycolmap.has_cuda:
        pytest.skip("this pycolmap has CUDA")
    options = replace(build_options().dense, backend="cuda")
    with pytest.raises(InvalidOptions, match="CUDA") as info:
        dense.run(gt_sparse, tmp_path / "work", tmp_path / "points.ply", options, no_progress, CancelToken())
    assert info.value.key == "dense.backend"


def test_the_cuda_branch_hands_pycolmap_the_documented_options_but_has_never_run_on_a_gpu(
    gt_sparse: Sparse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What can be checked without a GPU: the options the CUDA branch gives COLMAP, each from its DenseOptions field.

    This machine has no CUDA, so PatchMatch itself (and what the branch makes of its output) has
    never run here; every pycolmap call of the branch is replaced by a recorder, and the test stops
    at the first one whose output would be needed.
    """
    import pycolmap

    from pipelines.dense import colmap as dense_colmap

    calls: dict[str, dict[str, object]] = {}

    class Stop(Exception):
        pass

    def recorder(name: str, stop: bool = False):  # noqa: ANN202
        def call(**kwargs: object) -> None:
            calls[name] = kwargs
            if stop:
                raise Stop()

        return call

    monkeypatch.setattr(pycolmap, "has_cuda", True)
    monkeypatch.setattr(pycolmap, "undistort_images", recorder("undistort_images"))
    monkeypatch.setattr(pycolmap, "patch_match_stereo", recorder("patch_match_stereo"))
    monkeypatch.setattr(pycolmap, "stereo_fusion", recorder("stereo_fusion", stop=True))
    options = replace(build_options("balanced").dense, backend="cuda", num_source_views=5, min_consistent_views=3, window_radius=4, min_ncc=0.25)
    with pytest.raises(ReconstructionFailed) as stopped:  # the recorder's Stop surfaces as the stage's named failure
        dense_colmap.patch_match(gt_sparse.sparse_dir, gt_sparse.images_dir, tmp_path / "mvs", options, 12, no_progress, CancelToken())
    assert isinstance(stopped.value.__cause__, Stop)

    undistort = calls["undistort_images"]
    assert (undistort["num_patch_match_src_images"], undistort["undistort_options"].max_image_size) == (5, options.max_image_size)  # type: ignore[attr-defined]
    patch = calls["patch_match_stereo"]["options"]
    assert (patch.max_image_size, patch.window_radius, patch.geom_consistency, patch.filter) == (options.max_image_size, 4, True, True)  # type: ignore[attr-defined]
    assert (patch.filter_min_ncc, patch.filter_min_num_consistent) == (pytest.approx(0.25), 3)  # type: ignore[attr-defined]
    fusion = calls["stereo_fusion"]
    assert (fusion["input_type"], fusion["options"].min_num_pixels, fusion["options"].max_image_size) == ("geometric", 4, options.max_image_size)  # type: ignore[attr-defined]


def test_more_confirmations_than_source_views_is_an_invalid_option(gt_sparse: Sparse, tmp_path: Path) -> None:
    with pytest.raises(InvalidOptions) as built:  # refused where options are built (a request, the CLI)...
        build_options("balanced", {"dense.num_source_views": 2, "dense.min_consistent_views": 3})
    assert built.value.key == "dense.min_consistent_views" and "dense.num_source_views" in str(built.value)
    options = replace(build_options("balanced").dense, num_source_views=2, min_consistent_views=3)
    with pytest.raises(InvalidOptions) as info:  # ...and by the stage itself, for a caller that builds its own
        dense.run(gt_sparse, tmp_path / "work", tmp_path / "points.ply", options, no_progress, CancelToken())
    assert info.value.key == "dense.min_consistent_views"
    assert not (tmp_path / "work").exists()


def _slanted_plane_with_a_box(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True depth of a slanted plane with a nearer box in front, a noisy copy with holes, and the box mask."""
    h, w = 300, 400
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    truth = 1.0 / (0.4 + 0.0004 * u + 0.0002 * v)
    box = (u > 200) & (u < 260) & (v > 100) & (v < 160)
    truth[box] = 1.2
    rng = np.random.default_rng(seed)
    noisy = truth * (1 + rng.normal(0, noise, truth.shape))
    noisy[rng.random(truth.shape) < 0.05] = 0.0
    return truth, noisy.astype(np.float32), box


def test_local_plane_regression_removes_depth_noise_on_a_slanted_plane_and_keeps_the_edge() -> None:
    from scipy import ndimage

    from pipelines.dense.planes import fit_local_planes

    truth, noisy, box = _slanted_plane_with_a_box(0.003)
    out, counts = fit_local_planes(noisy, 5, 0.01)
    before = np.sqrt(np.mean(((noisy - truth) / truth)[noisy > 0] ** 2))
    after = np.sqrt(np.mean(((out - truth) / truth)[out > 0] ** 2))
    assert after < before / 3 and counts["fitted"] > 0.8 * (noisy > 0).sum()
    rim = ndimage.binary_dilation(box, iterations=2) ^ ndimage.binary_erosion(box, iterations=2)
    assert np.abs((out - truth) / truth)[rim & (out > 0)].max() < 0.015  # no depth smeared across the box's edge (a 15 % step)
    assert (out[noisy == 0] == 0).all()  # holes stay holes
    same, none = fit_local_planes(noisy, 0, 0.01)
    assert np.array_equal(same, noisy) and none["fitted"] == 0


def test_local_plane_regression_drops_a_wrong_winner_inside_a_good_plane() -> None:
    from pipelines.dense.planes import fit_local_planes

    truth, noisy, _ = _slanted_plane_with_a_box(0.002, seed=1)
    noisy[noisy == 0] = truth[noisy == 0]  # no holes, so the window around the outlier is full
    noisy[50, 50] *= 1.03  # a plane-sweep winner 3 % off, ten times the noise
    out, counts = fit_local_planes(noisy, 5, 0.01)
    assert out[50, 50] == 0 and counts["dropped"] >= 1


def test_edge_trimming_drops_depth_next_to_empty_pixels_only() -> None:
    from pipelines.dense.planes import trim_edges

    depth = np.ones((40, 60), dtype=np.float32)
    depth[:, 30:] = 0.0  # sky on the right: the nearer surface's last columns are suspect
    depth[10, 5] = 0.0  # a one-pixel hole inside the surface
    out = trim_edges(depth, 3)
    assert (out[:, 27:] == 0).all() and (out[:, :27] > 0).sum() == 40 * 27 - 7 * 7  # 3 columns and the hole's 7x7 neighbourhood go
    assert out[0, 0] == 1.0  # the image border is not an empty pixel
    assert np.array_equal(trim_edges(depth, 0), depth)
