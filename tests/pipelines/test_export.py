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
from pipelines.export import preview
from pipelines.export.preview import BACKGROUND, sample_texture
from pipelines.options import build_options
from pipelines.progress import CancelToken, no_progress
from pipelines.views import ColmapView as View
from pipelines.views import load_views
from tests.pipelines.surface_inputs import GtSparse, gt_sparse, gt_surface

TEXTURE = replace(build_options("preview").texture, texture_size=1024)
EXPORT = replace(build_options("preview").export, mobile_max_faces=12000, mobile_texture_size=512)
"""A mobile level simplified (the fixture's surface has about 24 000 faces) and baked at half the size."""


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
    res = export.run(textured, sparse, {}, tmp_path_factory.mktemp("out"), EXPORT, lambda f, m: reports.append(f), CancelToken())
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
    model_up /= np.linalg.norm(model_up)
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
    units_per_metre = 1.0 / exported.scale.metres_per_unit  # a similarity: rotation times the scale
    assert np.allclose(m[3], [0, 0, 0, 1]) and np.allclose(m[:3, :3] @ m[:3, :3].T, units_per_metre**2 * np.eye(3), atol=1e-9)
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
    res = export.run(plain, sparse, {}, tmp_path / "out", EXPORT, no_progress, CancelToken())
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
        export.run(textured, sparse, {}, tmp_path, EXPORT, no_progress, CancelToken())
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


# -- what the app receives: the mobile level, USDZ, real-world scale -----------------------------


def _render(path: Path) -> np.ndarray:
    """A 3/4 view of a GLB (RGB 0..1), the same camera for every file (fitted to the full model)."""
    mesh = trimesh.load(str(path), force="mesh", process=False)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    return preview.render(np.asarray(mesh.vertices), np.asarray(mesh.faces), uv=np.asarray(mesh.visual.uv), texture=texture, size=320) / 255.0


def test_mobile_level_is_simplified_and_looks_like_the_full_model(exported: export.ExportResult) -> None:
    from PIL import Image

    stats = exported.files["model_mobile.glb"]
    assert stats.faces <= EXPORT.mobile_max_faces < exported.num_faces and stats.texture_size == EXPORT.mobile_texture_size
    mobile = trimesh.load(str(exported.mobile_glb_path), force="mesh", process=False)
    assert len(mobile.faces) == stats.faces and mobile.visual.material.baseColorTexture.size == (512, 512)
    full, simple = _render(exported.glb_path), _render(exported.mobile_glb_path)
    background = np.array(BACKGROUND) / 255.0
    both = np.any(full != background, axis=2) & np.any(simple != background, axis=2)
    assert both.mean() > 0.1
    difference = np.abs(full - simple)[both].mean()
    # The full texture shrunk onto the simplified mesh (its own UVs do not fit it) looks nothing alike.
    shrunk = Image.fromarray(np.asarray(trimesh.load(str(exported.glb_path), force="mesh").visual.material.baseColorTexture.convert("RGB"))).resize((512, 512))
    wrong = preview.render(np.asarray(mobile.vertices), np.asarray(mobile.faces), uv=np.asarray(mobile.visual.uv), texture=np.asarray(shrunk), size=320) / 255.0
    assert difference < 0.06 and np.abs(full - wrong)[both].mean() > 2 * difference


def test_a_level_within_the_budget_is_kept_with_its_texture_downsampled() -> None:
    from pipelines.export.lod import Level, mobile_level

    rng = np.random.default_rng(0)
    full = Level(rng.normal(size=(30, 3)), rng.integers(0, 30, (10, 3)), np.tile([0.0, 1.0, 0.0], (30, 1)), rng.random((30, 3)), rng.random((30, 2)), rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    mobile = mobile_level(full, max_faces=100, texture_size=256, cancel=CancelToken())
    assert mobile.faces is full.faces and mobile.uv is full.uv and not mobile.simplified
    assert mobile.texture_size == 256 and np.abs(mobile.texture.mean(axis=(0, 1)) - full.texture.mean(axis=(0, 1))).max() < 1.0


def test_usdz_passes_openusd_validators_and_arkit_rules(exported: export.ExportResult) -> None:
    from pxr import Usd, UsdGeom

    from tests.deliverables import usdz_problems

    assert exported.usdz_path is not None
    assert usdz_problems(exported.usdz_path) == []
    stage = Usd.Stage.Open(str(exported.usdz_path))
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    points = np.asarray(UsdGeom.Mesh(stage.GetDefaultPrim().GetChild("Geom")).GetPointsAttr().Get())
    mobile = trimesh.load(str(exported.mobile_glb_path), force="mesh", process=False)
    assert np.allclose(points, mobile.vertices, atol=1e-5), "the USDZ is the mobile level"


def test_the_arkit_rules_catch_a_compressed_package_and_a_foreign_shader(exported: export.ExportResult, tmp_path: Path) -> None:
    import zipfile

    from tests.deliverables import arkit_problems

    assert exported.usdz_path is not None
    compressed = tmp_path / "compressed.usdz"
    with zipfile.ZipFile(exported.usdz_path) as src, zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert any("compressed" in p for p in arkit_problems(compressed))
    compressed.unlink()  # bad on purpose: not for the end-of-session sweep
    from pxr import Sdf, Usd, UsdShade, UsdUtils

    layer = tmp_path / "foreign.usdc"
    stage = Usd.Stage.CreateNew(str(layer))
    stage.SetDefaultPrim(stage.DefinePrim("/Model", "Xform"))
    UsdShade.Shader.Define(stage, "/Model/Surface").CreateIdAttr("ND_standard_surface_surfaceshader")
    stage.GetRootLayer().Save()
    UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(tmp_path / "foreign.usdz"))
    assert any("ND_standard_surface" in p for p in arkit_problems(tmp_path / "foreign.usdz"))
    (tmp_path / "foreign.usdz").unlink()


def test_glbs_pass_the_khronos_gltf_validator(exported: export.ExportResult, tmp_path: Path) -> None:
    from tests.deliverables import gltf_problems, gltf_validator_missing

    missing = gltf_validator_missing()
    if missing:
        pytest.skip(missing)
    assert gltf_problems([exported.glb_path, exported.mobile_glb_path]) == {}
    broken = tmp_path / "broken.glb"  # the validator can fail: a GLB cut short
    broken.write_bytes(exported.mobile_glb_path.read_bytes()[:5000])
    assert broken in gltf_problems([broken])
    broken.unlink()  # not left for the end-of-session sweep


def test_without_gps_or_size_the_model_is_normalised_and_says_so(exported: export.ExportResult) -> None:
    from pipelines.export.frame import subject_box
    from pipelines.export.scale import NORMALISED_SIZE_M

    assert exported.scale.source == "normalised" and not exported.scale.metric
    assert "0 registered photos have GPS" in exported.scale.detail
    mesh = trimesh.load(str(exported.glb_path), force="mesh", process=False)
    lo, hi = subject_box(np.asarray(mesh.vertices), np.asarray(mesh.faces), margin=0.0)
    assert max(hi - lo) == pytest.approx(NORMALISED_SIZE_M, rel=0.01)


def _gps(views: list[View], metres_per_unit: float, noise_m: float = 0.0, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """GPS fixes of the (metric, Z up) ground-truth camera centres at ``metres_per_unit``."""
    from fixtures.geometry import geodetic_from_enu
    from fixtures.scenes import GPS_ORIGIN

    enu = np.array([v.center for v in views]) * metres_per_unit + np.random.default_rng(seed).normal(0.0, noise_m, (len(views), 3))
    return {v.name: tuple(p) for v, p in zip(views, geodetic_from_enu(enu, GPS_ORIGIN), strict=True)}


def test_gps_exif_gives_metres(textured: texture.TextureResult, sparse: GtSparse, tmp_path: Path) -> None:
    views = load_views(sparse.sparse_dir, "test")
    res = export.run(textured, sparse, _gps(views, 10.0, noise_m=0.3), tmp_path, replace(EXPORT, usdz=False), no_progress, CancelToken())
    assert res.scale.source == "gps" and res.scale.metric and res.scale.gps_photos == len(views)
    assert res.scale.metres_per_unit == pytest.approx(10.0, rel=0.03)
    with np.load(textured.mesh) as data:
        sfm_extent = np.ptp(data["vertices"], axis=0)
    assert res.extent[1] == pytest.approx(10.0 * sfm_extent[2], rel=0.03)  # height: the ground truth is metric, Z up


def test_gps_that_cannot_give_a_scale_is_not_used(sparse: GtSparse) -> None:
    from pipelines.export.scale import metric_scale

    views = load_views(sparse.sparse_dir, "test")
    close = metric_scale(1.0, "the whole model", views, _gps(views, 1.0), 0.0)  # a 3 m ring: under the 5 m GPS needs
    assert close.source == "normalised" and "under 5 m" in close.detail
    fixes = _gps(views, 10.0)
    shuffled = dict(zip(fixes, np.random.default_rng(1).permutation(list(fixes.values())), strict=True))
    wrong = metric_scale(1.0, "the whole model", views, {k: tuple(v) for k, v in shuffled.items()}, 0.0)
    assert wrong.source == "normalised" and "do not fit" in wrong.detail


def test_the_request_size_wins_over_gps(sparse: GtSparse) -> None:
    from pipelines.export.scale import metric_scale

    views = load_views(sparse.sparse_dir, "test")
    scale = metric_scale(0.8, "the subject above the ground", views, _gps(views, 10.0), 2.0)
    assert scale.source == "request" and scale.metric and scale.metres_per_unit == pytest.approx(2.5)
    assert "GPS would give 8 m" in scale.detail
