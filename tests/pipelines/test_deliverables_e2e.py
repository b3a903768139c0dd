"""What the iPhone receives, end to end: portrait photos (EXIF Orientation 6) with GPS EXIF, through `recon run`.

The ``portrait_gps`` fixture's photos are stored turned and carry GPS positions of the true camera
centres as if the scene were a 1:4 model (4 m per scene metre, 0.3 m GPS noise). One run checks
that all three model files (full GLB, mobile GLB, USDZ) are in metres at the GPS scale, upright,
on the true surface, textured upright, and pass the glTF and USDZ validators.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.groundtruth import load_cameras, load_crop, load_mesh
from fixtures.scenes import SCENES, make_scene
from tests.deliverables import gltf_problems, gltf_validator_missing, usdz_problems

pytestmark = pytest.mark.slow

RECON = str(Path(sys.executable).with_name("recon"))
SPEC = SCENES["portrait_gps"]
MOBILE_FACES = 50_000


@dataclass
class ModelFile:
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene("portrait_gps")


@pytest.fixture(scope="module")
def run_dir(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deliverables") / "out"
    options = ["texture.texture_size=2048", f"export.mobile_max_faces={MOBILE_FACES}", "export.mobile_texture_size=1024"]
    done = subprocess.run(
        [RECON, "run", str(scene / "images"), "--out", str(out), "--preset", "balanced", *[a for o in options for a in ("--option", o)], "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def gt_from_model(run_dir: Path, scene: Path, report: dict[str, Any]) -> np.ndarray:
    done = subprocess.run([RECON, "eval", str(run_dir), "--gt", str(scene), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.asarray(json.loads(done.stdout)["gt_from_sfm"]) @ np.asarray(report["export"]["sfm_from_model"])


def _read_glb(path: Path) -> ModelFile:
    import trimesh

    mesh = trimesh.load(str(path), force="mesh", process=False)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    return ModelFile(np.asarray(mesh.vertices), np.asarray(mesh.faces), np.asarray(mesh.visual.uv), texture)  # uv: OpenGL convention


def _read_usdz(path: Path) -> ModelFile:
    import cv2
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    mesh = UsdGeom.Mesh(stage.GetDefaultPrim().GetChild("Geom"))
    vertices = np.asarray(mesh.GetPointsAttr().Get(), dtype=np.float64)
    faces = np.asarray(mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3)
    uv = np.asarray(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get(), dtype=np.float64)  # USD: t up, as OpenGL
    with zipfile.ZipFile(path) as package:
        jpeg = np.frombuffer(package.read("texture.jpg"), dtype=np.uint8)
    return ModelFile(vertices, faces, uv, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.fixture(scope="module")
def files(run_dir: Path) -> dict[str, ModelFile]:
    return {"model.glb": _read_glb(run_dir / "model.glb"), "model_mobile.glb": _read_glb(run_dir / "model_mobile.glb"), "model.usdz": _read_usdz(run_dir / "model.usdz")}


def test_scale_comes_from_gps_within_5_percent_of_the_truth(report: dict[str, Any], gt_from_model: np.ndarray) -> None:
    scale = report["scale"]
    assert scale["source"] == "gps" and scale["metric"] is True and scale["gps_photos"] == SPEC.n_photos
    metres_per_scene_metre = 1.0 / float(np.cbrt(np.linalg.det(gt_from_model[:3, :3])))
    assert metres_per_scene_metre == pytest.approx(SPEC.gps_metres_per_unit, rel=0.05)
    assert report["export"]["units"] == "metres"


def test_every_file_is_upright_and_lies_on_the_true_surface(files: dict[str, ModelFile], scene: Path, gt_from_model: np.ndarray) -> None:
    import open3d as o3d

    up = gt_from_model[:3, :3] @ np.array([0.0, 1.0, 0.0])
    assert np.degrees(np.arccos(np.clip(up[2] / np.linalg.norm(up), -1, 1))) < 3.0, "model +Y must be the world's up"
    truth = o3d.t.geometry.RaycastingScene()
    truth.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(load_mesh(scene)))
    crop = load_crop(scene)
    for name, model in files.items():
        gt_points = model.vertices @ gt_from_model[:3, :3].T + gt_from_model[:3, 3]
        inside = crop.contains(gt_points)
        distance = truth.compute_distance(o3d.core.Tensor(gt_points[inside].astype(np.float32))).numpy()
        assert np.median(distance) < 0.005 * crop.diagonal, f"{name} is not on the true surface"
    assert len(files["model_mobile.glb"].faces) <= MOBILE_FACES and len(files["model.usdz"].faces) == len(files["model_mobile.glb"].faces)


def _texture_error(model: ModelFile, texture: np.ndarray, gt_from_model: np.ndarray, scene: Path) -> float:
    """Median |texture colour - upright photo colour| (0..1) over the vertices the first photo sees unoccluded."""
    import open3d as o3d
    from PIL import Image, ImageOps

    from pipelines.export.preview import sample_texture

    camera = load_cameras(scene)[0]
    with Image.open(scene / "images" / camera.name) as img:
        photo = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    points = model.vertices @ gt_from_model[:3, :3].T + gt_from_model[:3, 3]
    pixels, depth = camera.project(points)
    seen = (depth > 0) & (pixels[:, 0] >= 1) & (pixels[:, 0] < camera.width - 1) & (pixels[:, 1] >= 1) & (pixels[:, 1] < camera.height - 1)
    truth = o3d.t.geometry.RaycastingScene()
    truth.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(load_mesh(scene)))
    direction = points - camera.center
    distance = np.linalg.norm(direction, axis=1)
    rays = np.concatenate([np.broadcast_to(camera.center, points.shape), direction / distance[:, None]], axis=1).astype(np.float32)
    hit = truth.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    seen &= np.abs(hit - distance) < 0.01  # nothing in front of the vertex
    ix, iy = pixels[seen, 0].astype(int), pixels[seen, 1].astype(int)
    expected = photo[iy, ix] / 255.0
    return float(np.median(np.abs(sample_texture(texture, model.uv[seen]) - expected)))


def test_every_texture_is_upright_and_shows_the_photos(files: dict[str, ModelFile], gt_from_model: np.ndarray, scene: Path) -> None:
    for name, model in files.items():
        error = _texture_error(model, model.texture, gt_from_model, scene)
        turned = _texture_error(model, np.ascontiguousarray(np.rot90(model.texture)), gt_from_model, scene)
        assert error < 0.08, f"{name}: texture differs from the photo by {error:.3f}"
        assert turned > 2 * error, f"{name}: the check cannot tell a turned texture ({turned:.3f}) from the right one"


def test_files_pass_the_gltf_and_usdz_validators(run_dir: Path) -> None:
    assert usdz_problems(run_dir / "model.usdz") == []
    missing = gltf_validator_missing()
    if missing:
        pytest.skip(missing)
    assert gltf_problems([run_dir / "model.glb", run_dir / "model_mobile.glb"]) == {}


def test_report_lists_each_file_with_its_size(run_dir: Path, report: dict[str, Any]) -> None:
    listed = report["export"]["files"]
    assert set(listed) == {"model.glb", "model_mobile.glb", "model.usdz"}
    for name, stats in listed.items():
        assert stats["bytes"] == (run_dir / name).stat().st_size
    assert listed["model_mobile.glb"]["texture_size"] == 1024 and listed["model.glb"]["texture_size"] == 2048
