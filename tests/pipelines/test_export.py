"""Export stage: GLB conventions (Y up, centred, glTF UVs), the way back to SfM, preview, fallback."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from fixtures.scenes import make_scene
from pipelines import export, texture
from pipelines.errors import ReconstructionFailed
from pipelines.export.preview import BACKGROUND, sample_texture
from pipelines.options import build_options
from pipelines.progress import CancelToken, no_progress
from pipelines.views import ColmapView as View
from pipelines.views import load_views
from tests.pipelines.surface_inputs import GtSparse, gt_sparse, gt_surface

TEXTURE = replace(build_options("preview").texture, texture_size=1024)


@pytest.fixture(scope="module")
def scene() -> Path:
    return make_scene("tabletop_small")


@pytest.fixture(scope="module")
def sparse(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> GtSparse:
    return gt_sparse(scene, tmp_path_factory.mktemp("export_sparse"))


@pytest.fixture(scope="module")
def textured(scene: Path, sparse: GtSparse, tmp_path_factory: pytest.TempPathFactory) -> texture.TextureResult:
    root = tmp_path_factory.mktemp("export_inputs")
    surface = gt_surface(scene, root / "surface.ply", max_edge=0.05)
    return texture.run(surface, sparse, root / "texture", TEXTURE, no_progress, CancelToken())


@pytest.fixture(scope="module")
def exported(textured: texture.TextureResult, sparse: GtSparse, tmp_path_factory: pytest.TempPathFactory) -> export.ExportResult:
    assert textured.textured
    reports: list[float] = []
    res = export.run(textured, sparse, tmp_path_factory.mktemp("out"), lambda f, m: reports.append(f), CancelToken())
    assert reports == sorted(reports) and reports[-1] == 1.0
    return res


def _glb_parts(path: Path) -> tuple[dict, bytes]:
    """The JSON chunk and the binary chunk of a GLB file (glTF 2.0 binary container)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    assert (magic, version) == (b"glTF", 2)
    json_len, _ = struct.unpack_from("<I4s", data, 12)
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, _ = struct.unpack_from("<I4s", data, 20 + json_len)
    return gltf, data[28 + json_len : 28 + json_len + bin_len]


def _accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5121: np.uint8, 5123: np.uint16}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)


def test_glb_reloads_with_its_texture_and_every_face(exported: export.ExportResult, textured: texture.TextureResult) -> None:
    mesh = trimesh.load(str(exported.glb_path), force="mesh", process=False)
    assert len(mesh.faces) == textured.num_faces == exported.num_faces
    image = mesh.visual.material.baseColorTexture
    assert image.size == (TEXTURE.texture_size, TEXTURE.texture_size)
    gltf, binary = _glb_parts(exported.glb_path)
    assert gltf["images"][0]["mimeType"] == "image/jpeg"
    pbr = gltf["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in pbr and pbr.get("metallicFactor") == 0.0
    normals = _accessor(gltf, binary, gltf["meshes"][0]["primitives"][0]["attributes"]["NORMAL"])
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-3), "glTF requires unit normals"
    assert exported.glb_bytes == exported.glb_path.stat().st_size
    assert exported.summary()["textured"] is True


def test_model_is_upright_and_centred(exported: export.ExportResult) -> None:
    """The ground (world +Z in the fixture) is +Y, the model stands on y = 0, centred on x = z = 0."""
    mesh = trimesh.load(str(exported.glb_path), force="mesh", process=False)
    v = np.asarray(mesh.vertices)
    sfm_from_model = np.asarray(exported.sfm_from_model)
    model_up = np.linalg.inv(sfm_from_model[:3, :3]) @ np.array([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(np.clip(model_up[1], -1, 1))) < 1.0
    assert exported.up_source == "ground plane"
    extent = v.max(axis=0) - v.min(axis=0)
    assert abs(v[:, 1].min()) < 1e-5
    assert np.all(np.abs((v.max(axis=0) + v.min(axis=0))[[0, 2]] / 2) < 1e-5 * extent.max())
    assert np.allclose(exported.extent, extent, atol=1e-5)


def test_sfm_from_model_maps_glb_vertices_back_onto_the_input_mesh(exported: export.ExportResult, textured: texture.TextureResult) -> None:
    from scipy.spatial import cKDTree

    mesh = trimesh.load(str(exported.glb_path), force="mesh", process=False)
    m = np.asarray(exported.sfm_from_model)
    assert np.allclose(m[3], [0, 0, 0, 1]) and np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-9)
    back = np.asarray(mesh.vertices) @ m[:3, :3].T + m[:3, 3]
    with np.load(textured.mesh) as data:
        original = data["vertices"]
    dist, _ = cKDTree(original).query(back)
    assert dist.max() < 1e-5


def test_glb_texture_coordinates_use_the_gltf_top_left_origin(exported: export.ExportResult, textured: texture.TextureResult) -> None:
    """Read TEXCOORD_0 and the embedded JPEG straight from the file: glTF puts v = 0 at the top row."""
    from PIL import Image

    gltf, binary = _glb_parts(exported.glb_path)
    prim = gltf["meshes"][0]["primitives"][0]
    uv = _accessor(gltf, binary, prim["attributes"]["TEXCOORD_0"]).astype(np.float64)
    img_view = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
    start = img_view.get("byteOffset", 0)
    embedded = np.asarray(Image.open(io.BytesIO(binary[start : start + img_view["byteLength"]])).convert("RGB"))
    h, w = embedded.shape[:2]
    x = (uv[:, 0] * w - 0.5).astype(np.float32)
    y = (uv[:, 1] * h - 0.5).astype(np.float32)  # glTF: row 0 at v = 0
    from_file = cv2.remap(embedded, x[:, None], y[:, None], cv2.INTER_LINEAR)[:, 0] / 255.0
    # The same vertices' colours as the texture stage baked them (its own, OpenGL-convention UVs).
    assert textured.texture_path is not None
    png = np.ascontiguousarray(cv2.imread(str(textured.texture_path))[:, :, ::-1])
    with np.load(textured.mesh) as data:
        expected = sample_texture(png, data["uv"])
    assert len(expected) == len(from_file)
    assert np.abs(from_file - expected).mean() < 0.03
    flipped = cv2.remap(embedded, x[:, None], (h - 1 - y)[:, None], cv2.INTER_LINEAR)[:, 0] / 255.0
    assert np.abs(flipped - expected).mean() > 0.08  # the check can tell the two conventions apart


def test_preview_shows_the_textured_model(exported: export.ExportResult) -> None:
    image = cv2.imread(str(exported.preview_path))[:, :, ::-1]
    assert image.shape == (export.PREVIEW_SIZE, export.PREVIEW_SIZE, 3)
    model = np.any(image != np.array(BACKGROUND, dtype=np.uint8), axis=2)
    assert model.mean() > 0.15
    assert image[model].std(axis=0).min() > 20, "the texture did not reach the preview"


def test_vertex_colour_fallback_exports_colours_without_texture(textured: texture.TextureResult, sparse: GtSparse, scene: Path, tmp_path: Path) -> None:
    surface = gt_surface(scene, tmp_path / "surface.ply", max_edge=0.05)
    plain = texture.run(surface, sparse, tmp_path / "texture", replace(TEXTURE, enabled=False), no_progress, CancelToken())
    res = export.run(plain, sparse, tmp_path / "out", no_progress, CancelToken())
    assert not res.textured and res.preview_path.is_file()
    gltf, binary = _glb_parts(res.glb_path)
    assert "images" not in gltf or not gltf["images"]
    colours = _accessor(gltf, binary, gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"])
    with np.load(plain.mesh) as data:
        expected = np.round(data["colors"] * 255)
    assert np.abs(colours[:, :3].astype(np.float64) - expected).max() <= 1


def test_up_comes_from_the_cameras_when_there_is_no_plane(textured: texture.TextureResult, sparse: GtSparse) -> None:
    """Only the fixture's sphere (centre (-0.40, -0.35, 0.16), radius 0.16 m): no plane to trust."""
    with np.load(textured.mesh) as data:
        v, f = data["vertices"], data["faces"]
    sphere = f[np.linalg.norm(v[f].mean(axis=1) - [-0.40, -0.35, 0.16], axis=1) < 0.165]
    assert len(sphere) > 100
    up, source = export.gravity_up(v, sphere, load_views(sparse.sparse_dir, "test"))
    assert source == "cameras"
    assert np.degrees(np.arccos(np.clip(up[2], -1, 1))) < 5.0


def test_ground_plane_corrects_tilted_camera_up(textured: texture.TextureResult, sparse: GtSparse) -> None:
    """Photos all held 12 deg off upright: the ground plane still gives the true up."""
    with np.load(textured.mesh) as data:
        v, f = data["vertices"], data["faces"]
    a = np.radians(12.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    views = [replace(view, R=view.R @ tilt) for view in load_views(sparse.sparse_dir, "test")]
    camera_up = np.mean([view.up for view in views], axis=0)
    assert np.degrees(np.arccos(camera_up[2] / np.linalg.norm(camera_up))) > 10
    up, source = export.gravity_up(v, f, views)
    assert source == "ground plane"
    assert np.degrees(np.arccos(np.clip(up[2], -1, 1))) < 1.0


def test_an_unreadable_glb_is_removed_and_reported(textured: texture.TextureResult, sparse: GtSparse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = trimesh.exchange.gltf.export_glb
    monkeypatch.setattr(trimesh.exchange.gltf, "export_glb", lambda *a, **k: real(*a, **k)[:1000])
    with pytest.raises(ReconstructionFailed) as err:
        export.run(textured, sparse, tmp_path, no_progress, CancelToken())
    assert err.value.stage == "export"
    assert not (tmp_path / "model.glb").exists()


def test_view_helper_projects_like_the_ground_truth_cameras(scene: Path, sparse: GtSparse) -> None:
    from fixtures import groundtruth

    cams = {c.name: c for c in groundtruth.load_cameras(scene)}
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 3))
    for view in load_views(sparse.sparse_dir, "test"):
        assert isinstance(view, View)
        uv, depth = view.project(points)
        gt_uv, gt_depth = cams[view.name].project(points)
        assert np.allclose(uv, gt_uv, atol=1e-6) and np.allclose(depth, gt_depth)
        assert np.allclose(view.center, cams[view.name].center)
