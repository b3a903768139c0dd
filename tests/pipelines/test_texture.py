"""Texturing stage on the ground-truth surface of the committed fixture scene, checked against the photos."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures import groundtruth
from fixtures.scenes import make_scene
from pipelines import texture
from pipelines.errors import Cancelled
from pipelines.export.preview import sample_texture
from pipelines.options import build_options
from pipelines.progress import CancelToken, no_progress
from tests.pipelines.surface_inputs import GtSparse, GtSurface, gt_sparse, gt_surface

OPTIONS = replace(build_options("preview").texture, texture_size=2048)


@pytest.fixture(scope="module")
def scene() -> Path:
    return make_scene("tabletop_small")


@pytest.fixture(scope="module")
def inputs(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[GtSurface, GtSparse]:
    root = tmp_path_factory.mktemp("texture_inputs")
    return gt_surface(scene, root / "surface.ply"), gt_sparse(scene, root / "sparse")


@pytest.fixture(scope="module")
def result(inputs: tuple[GtSurface, GtSparse], tmp_path_factory: pytest.TempPathFactory) -> texture.TextureResult:
    surface, sparse = inputs
    reports: list[float] = []
    res = texture.run(surface, sparse, tmp_path_factory.mktemp("texture"), OPTIONS, lambda f, m: reports.append(f), CancelToken())
    assert reports == sorted(reports) and reports[-1] == 1.0
    return res


def _load(res: texture.TextureResult) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(res.mesh) as data:
        arrays = {k: data[k] for k in data.files}
    assert res.texture_path is not None
    image = cv2.imread(str(res.texture_path), cv2.IMREAD_COLOR)[:, :, ::-1]
    return arrays, np.ascontiguousarray(image)


def _sample_faces(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random faces (by area) and barycentric weights (n, 3) of points on them."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    a, b = rng.random(n), rng.random(n)
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    return pick, np.stack([1 - a - b, a, b], axis=1)


def test_result_describes_a_textured_mesh(result: texture.TextureResult) -> None:
    assert result.textured and result.fallback_reason is None
    assert result.texture_size == OPTIONS.texture_size
    assert result.views_used == 12
    assert result.seen_fraction > 0.9  # the rest is ground and step tops hidden under objects
    summary = result.summary()
    assert summary["textured"] is True and summary["charts"] == result.num_charts > 0


def _error_against_photos(res: texture.TextureResult, scene: Path, rng: np.random.Generator) -> tuple[float, float]:
    """Mean abs difference (0..1) between the texture at surface points inside the crop and the
    photo where the most frontal camera sees each point; and the same against shuffled photo
    colours (what a wrong texture would score)."""
    _, baked, photo, frontal = _baked_and_photo(res, scene, rng)
    error = float(np.abs(baked[frontal] - photo[frontal]).mean())
    return error, float(np.abs(baked[frontal] - rng.permutation(photo[frontal])).mean())


def _baked_and_photo(res: texture.TextureResult, scene: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surface points inside the crop (N, 3), the texture's colour there (N, 3), the scene photo's colour
    where the most frontal camera sees each point (N, 3), and whether that camera is frontal (N,)."""
    import open3d as o3d

    mesh, image = _load(res)
    v, f, uv = mesh["vertices"], mesh["faces"], mesh["uv"]
    crop = groundtruth.load_crop(scene)
    face, bary = _sample_faces(v, f, 20_000, rng)
    points = np.einsum("nk,nkj->nj", bary, v[f[face]])
    inside = crop.contains(points)
    points, face, bary = points[inside], face[inside], bary[inside]
    baked = sample_texture(image, np.einsum("nk,nkj->nj", bary, uv[f[face]]))

    tri = v[f[face]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    scene_rc = o3d.t.geometry.RaycastingScene()
    scene_rc.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
    best_cos = np.zeros(len(points))
    photo = np.zeros((len(points), 3))
    for cam in groundtruth.load_cameras(scene):
        pix, depth = cam.project(points)
        d = points - cam.center
        dist = np.linalg.norm(d, axis=1)
        cos = np.abs(np.sum(d * normal, axis=1)) / dist
        rays = np.concatenate([np.broadcast_to(cam.center, d.shape), d / dist[:, None]], axis=1).astype(np.float32)
        visible = scene_rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy() > dist - 1e-3
        ok = visible & (depth > 0) & (pix[:, 0] > 2) & (pix[:, 1] > 2) & (pix[:, 0] < cam.width - 2) & (pix[:, 1] < cam.height - 2) & (cos > best_cos)
        img = cv2.imread(str(scene / "images" / cam.name))[:, :, ::-1].astype(np.float32) / 255.0
        xy = (pix[ok] - 0.5).astype(np.float32)
        photo[ok] = cv2.remap(img, xy[:, :1], xy[:, 1:], cv2.INTER_LINEAR)[:, 0]
        best_cos[ok] = cos[ok]
    frontal = best_cos > 0.5
    assert frontal.mean() > 0.8
    return points, baked, photo, frontal


def test_baked_colours_match_the_photos_at_surface_points(result: texture.TextureResult, scene: Path) -> None:
    """Texture colour at a surface point == the photo's colour where the most frontal camera sees it."""
    error, shuffled = _error_against_photos(result, scene, np.random.default_rng(0))
    print(f"mean abs error {error:.4f}, shuffled {shuffled:.4f}")
    assert error < 0.045, error
    assert shuffled > 4 * error  # the comparison can tell a right texture from a wrong one


def test_a_darker_photo_is_brightened_to_match_the_others(inputs: tuple[GtSurface, GtSparse], scene: Path, tmp_path: Path) -> None:
    """One photo taken with 35 % less exposure: its gain makes up for it and the texture stays true."""
    surface, sparse = inputs
    images = tmp_path / "images"
    shutil.copytree(sparse.images_dir, images)
    dark = sorted(images.glob("*.jpg"))[3]
    pixels = cv2.imread(str(dark)).astype(np.float32) * 0.65
    cv2.imwrite(str(dark), np.clip(pixels + 0.5, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    res = texture.run(surface, GtSparse(sparse.sparse_dir, images), tmp_path / "work", OPTIONS, no_progress, CancelToken())
    gains = dict(zip(sorted(p.name for p in images.glob("*.jpg")), res.exposure_gains, strict=True))
    assert abs(gains[dark.name] - 1 / 0.65) < 0.08, gains
    assert all(abs(g - 1.0) < 0.03 for name, g in gains.items() if name != dark.name), gains
    error, _ = _error_against_photos(res, scene, np.random.default_rng(0))
    assert error < 0.045, error


def test_a_passer_by_in_one_photo_does_not_land_on_the_texture(inputs: tuple[GtSurface, GtSparse], scene: Path, tmp_path: Path) -> None:
    """A magenta disc covers the middle of one photo (someone walked past): the other photos that see
    those faces outvote it, so the texture there keeps the surface's colours. Measured: 0.8 % of those
    points magenta with the vote, 4.3 % without; what is left are faces only one or two photos see,
    where there is no majority."""
    surface, sparse = inputs
    images = tmp_path / "images"
    shutil.copytree(sparse.images_dir, images)
    cameras = groundtruth.load_cameras(scene)
    cam = cameras[4]
    photo = cv2.imread(str(images / cam.name))
    centre, radius = (cam.width // 2, cam.height // 2), cam.height // 4
    cv2.circle(photo, centre, radius, (255, 0, 255), -1)
    cv2.imwrite(str(images / cam.name), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    measured = {}
    for vote in (True, False):
        res = texture.run(surface, GtSparse(sparse.sparse_dir, images), tmp_path / f"work-{vote}", replace(OPTIONS, photo_consistency=vote), no_progress, CancelToken())
        points, baked, truth, _ = _baked_and_photo(res, scene, np.random.default_rng(0))
        pix, depth = cam.project(points)
        under = (np.linalg.norm(pix - np.array(centre), axis=1) < radius - 3) & (depth > 0)
        magenta = (baked[:, 0] > 0.7) & (baked[:, 1] < 0.3) & (baked[:, 2] > 0.7)
        measured[vote] = (float(magenta[under].mean()), float(np.abs(baked[under] - truth[under]).mean()), res.summary()["rejected_views"])
        assert under.sum() > 1000
    print(f"magenta share, error, rejected face views under the disc: with the vote {measured[True]}, without {measured[False]}")
    assert measured[True][0] < 0.01 and measured[True][1] < 0.1 and measured[True][2] > 0
    assert measured[False][0] > 0.02 and measured[False][2] == 0  # without the vote the passer-by does land on the texture


def test_faces_no_photo_sees_take_their_neighbours_colours(inputs: tuple[GtSurface, GtSparse], tmp_path: Path) -> None:
    """The mesh's vertex colours are a wrong magenta; faces no photo sees (the ground under the objects)
    get the colours of the seen surface around them instead of it."""
    import open3d as o3d

    surface, sparse = inputs
    mesh = o3d.io.read_triangle_mesh(str(surface.mesh_path))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.tile([1.0, 0.0, 1.0], (len(mesh.vertices), 1)))
    painted = tmp_path / "magenta.ply"
    o3d.io.write_triangle_mesh(str(painted), mesh)
    res = texture.run(GtSurface(painted, surface.num_vertices, surface.num_faces), sparse, tmp_path / "work", OPTIONS, no_progress, CancelToken())
    assert 0.0 < res.summary()["filled_fraction"] < 0.1
    arrays, image = _load(res)
    f, uv = arrays["faces"], arrays["uv"]
    baked = sample_texture(image, uv[f].mean(axis=1))
    magenta = (baked[:, 0] > 0.7) & (baked[:, 1] < 0.3) & (baked[:, 2] > 0.7)
    print(f"magenta faces {magenta.mean():.5f}, filled {res.summary()['filled_fraction']}")
    assert magenta.mean() < 1e-3


def _overlap_fraction(uv: np.ndarray, f: np.ndarray) -> float:
    """Share of faces (with UV area) whose UV centre another face covers: they would show its texels."""
    return float(np.mean(_overlapping(uv, f)))


def _overlapping(uv: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per face with UV area, whether another face covers its UV centre."""
    import open3d as o3d

    # each face its own triangle at its own height: coplanar triangles at one distance may count once
    lift = np.repeat(np.arange(len(f), dtype=np.float64)[:, None, None] / len(f), 3, axis=1)
    corners = np.concatenate([uv[f], lift], axis=2).reshape(-1, 3).astype(np.float32)
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(corners), o3d.core.Tensor(np.arange(3 * len(f), dtype=np.uint32).reshape(-1, 3)))
    centre = uv[f].mean(axis=1)
    rays = np.concatenate([centre, 2 * np.ones((len(f), 1)), np.zeros((len(f), 2)), -np.ones((len(f), 1))], axis=1).astype(np.float32)
    count = rc.count_intersections(o3d.core.Tensor(rays)).numpy()
    e1, e2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    real = area > 1e-12
    return count[real] > 1


def test_atlas_charts_do_not_overlap(result: texture.TextureResult) -> None:
    mesh, _ = _load(result)
    uv, f = mesh["uv"], mesh["faces"]
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    assert _overlap_fraction(uv, f) < 0.001


def _wall_with_an_overhang(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A wall (x = 0, y and z in 0..1, facing +x) and, hinged on its top edge, a flap leaning out over it
    down to y = 0.5, x = 0.2: both face +x, are joined, and one hides the other seen along x."""
    t = np.linspace(0.0, 1.0, n)
    yy, zz = np.meshgrid(t, t, indexing="ij")
    wall = np.stack([np.zeros_like(yy), yy, zz], axis=-1)
    flap = np.stack([0.2 * (1 - yy), 1.0 - 0.5 * (1 - yy), zz], axis=-1)  # row 0 of the flap is its free edge
    vertices = np.concatenate([wall.reshape(-1, 3), flap[:-1].reshape(-1, 3)])  # the flap's last row is the wall's top row
    index = np.arange(n * n).reshape(n, n)
    flap_index = np.concatenate([n * n + np.arange((n - 1) * n).reshape(n - 1, n), index[-1:]])
    quads = []
    for grid in (index, flap_index):
        a, b, c, d = grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]
        quads += [np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)]
    return vertices, np.concatenate(quads)


def test_a_chart_folding_over_itself_is_cut_in_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Projected along x, the flap lies over the wall behind it: one chart would give both the same texels
    (the fox's head showing the wallpaper). The atlas cuts the chart where it folds."""
    from pipelines.texture import atlas

    vertices, faces = _wall_with_an_overhang()
    built = atlas.build_atlas(vertices, faces, 512, 2)
    overlapping = _overlapping(built.uv_gl(), built.faces)
    assert built.num_charts >= 2 and overlapping.mean() < 0.03
    # what still shares texels is the band along the hinge where flap and wall are closer than a few texels
    gap = vertices[faces[overlapping]].mean(axis=1)[:, 0]
    assert gap.max() < (atlas.MIN_LAYER_GAP_TEXELS + 1) * built.texel_size
    monkeypatch.setattr(atlas, "SPLIT_ROUNDS", 0)
    folded = atlas.build_atlas(vertices, faces, 512, 2)
    assert folded.num_charts == 1 and _overlap_fraction(folded.uv_gl(), folded.faces) > 0.2  # what the cut prevents


def test_a_noisy_scan_gets_few_charts_none_folded_or_steeper_than_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sphere with radial noise of 0.2 edge lengths (face normals scattered like a scan's): labels by raw
    normals break it into a thousand charts, each bordered by seams; smoothed normals and absorbed small
    charts leave about one per axis, with no face flipped or projected steeper than ``ABSORB_MIN_COSINE``."""
    import trimesh

    from pipelines.texture import atlas

    sphere = trimesh.creation.icosphere(subdivisions=5)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.2 * sphere.edges_unique_length.mean(), len(sphere.vertices))
    vertices, faces = sphere.vertices * (1.0 + noise)[:, None], sphere.faces.astype(np.int64)
    built = atlas.build_atlas(vertices, faces, 1024, 2)
    assert built.num_charts <= 20
    uv = built.texel_xy[built.faces] * built.texel_size  # model units, a rigid turn of each chart's projection
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    signed = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    area = 0.5 * np.linalg.norm(np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1)
    assert np.all(np.abs(signed) / area >= atlas.ABSORB_MIN_COSINE * 0.999)  # projected area = cos(normal, axis) x area
    for c in range(built.num_charts):
        side = np.sign(signed[built.face_chart == c])
        assert np.all(side == side[0])  # no face flipped over within its chart
    assert _overlap_fraction(built.uv_gl(), built.faces) < 0.001
    monkeypatch.setattr(atlas, "NORMAL_SMOOTHING_ROUNDS", 0)
    monkeypatch.setattr(atlas, "MIN_CHART_FACES", 0)
    assert atlas.build_atlas(vertices, faces, 1024, 2).num_charts > 500  # what the two steps prevent


def test_chart_borders_are_padded_with_their_own_colours(result: texture.TextureResult) -> None:
    """Texels just outside the charts repeat the chart colours, so filtering shows no dark seams."""
    mesh, image = _load(result)
    size = image.shape[0]
    uv, f = mesh["uv"], mesh["faces"]
    covered = np.zeros((size, size), np.uint8)
    px = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)
    cv2.fillPoly(covered, list(np.round(px[f] * 16).astype(np.int32)), 1, lineType=cv2.LINE_8, shift=4)
    ring = (cv2.dilate(covered, np.ones((5, 5), np.uint8)) > 0) & (covered == 0)
    img = image.astype(np.float32) / 255.0
    inside_sum = cv2.boxFilter(img * covered[..., None], -1, (7, 7), normalize=False)
    inside_n = cv2.boxFilter(covered.astype(np.float32), -1, (7, 7), normalize=False)
    near = inside_sum[ring] / np.maximum(inside_n[ring], 1)[:, None]
    assert ring.sum() > 1000
    print(f"ring error {np.abs(img[ring] - near).mean():.4f}")
    assert np.abs(img[ring] - near).mean() < 0.06
    assert np.all(image.reshape(-1, 3).max(axis=1) > 0) or (image.reshape(-1, 3).max(axis=1) == 0).mean() < 1e-4


def test_disabled_texture_keeps_vertex_colours(inputs: tuple[GtSurface, GtSparse], tmp_path: Path) -> None:
    surface, sparse = inputs
    res = texture.run(surface, sparse, tmp_path, replace(OPTIONS, enabled=False), no_progress, CancelToken())
    assert not res.textured and res.texture_path is None and res.texture_size == 0
    assert "texture.enabled" in (res.fallback_reason or "")
    with np.load(res.mesh) as data:
        assert "uv" not in data.files
        assert data["colors"].shape == data["vertices"].shape and len(data["faces"]) == res.num_faces


def test_unreadable_photos_fall_back_to_vertex_colours_with_the_reason(inputs: tuple[GtSurface, GtSparse], tmp_path: Path) -> None:
    surface, sparse = inputs
    broken = tmp_path / "images"
    shutil.copytree(sparse.images_dir, broken)
    next(broken.glob("*.jpg")).write_bytes(b"not a jpeg")
    res = texture.run(surface, GtSparse(sparse.sparse_dir, broken), tmp_path / "work", OPTIONS, no_progress, CancelToken())
    assert not res.textured
    assert "cannot read the working image" in (res.fallback_reason or "")
    assert res.summary()["fallback_reason"] == res.fallback_reason


def test_cancel_is_not_turned_into_a_fallback(inputs: tuple[GtSurface, GtSparse], tmp_path: Path) -> None:
    surface, sparse = inputs
    cancel = CancelToken()

    def progress(fraction: float, message: str) -> None:
        if fraction >= 0.1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        texture.run(surface, sparse, tmp_path, OPTIONS, progress, cancel)
