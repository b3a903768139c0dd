"""Scoring a run without ground truth: the textured model rendered from the photos' cameras (``recon eval --photometric``).

Each camera is rendered by casting one ray per pixel (through ``pycolmap.Camera.cam_from_img``,
so the lens distortion COLMAP estimated is honoured) into ``model.glb`` and looking the hit up in
its texture; the rendering is compared with the photo over the pixels the model covers:

- **PSNR** (dB, 8-bit RGB) after one least-squares gain per colour channel, since the texture is
  balanced across photos of different exposure and the metric should score geometry and
  texture, not a photo's exposure;
- **SSIM** (grey, Gaussian window sigma 1.5 px) averaged over covered pixels;
- **coverage**: fraction of the photo's pixels the model covers (sky and background included in
  the denominator, so it is a property of the scene as much as of the model).

Two modes: *fit* renders the run's own registered photos (how well the model explains the photos
it was built from); *held out* renders photos the run never saw, at their poses from a run on all
photos, carried into this run's frame by a similarity fitted to the camera centres both runs share.
Images are compared at most :data:`MAX_SIDE` px on their long side (area-averaged) to bound time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import InvalidInput
from pipelines.export.preview import sample_texture
from pipelines.geometry import robust_similarity
from pipelines.views import ColmapView, load_views

logger = logging.getLogger(__name__)

MAX_SIDE = 800
"""Long side (px) at which renderings and photos are compared."""


@dataclass(frozen=True)
class ViewScore:
    name: str
    psnr_db: float
    ssim: float
    coverage: float


@dataclass
class PhotometricResult:
    """Per-photo and median scores; ``to_dict()`` goes into ``eval.json`` under ``photometric``."""

    mode: str
    """``fit`` (the run's own photos) or ``held_out``."""
    views: list[ViewScore] = field(default_factory=list)
    note: str = ""

    def _median(self, key: str) -> float | None:
        values = [getattr(v, key) for v in self.views if np.isfinite(getattr(v, key))]
        return float(np.median(values)) if values else None

    @property
    def psnr_db(self) -> float | None:
        return self._median("psnr_db")

    @property
    def ssim(self) -> float | None:
        return self._median("ssim")

    @property
    def coverage(self) -> float | None:
        return self._median("coverage")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "photos": len(self.views), "psnr_db_median": self.psnr_db, "ssim_median": self.ssim,
                "coverage_median": self.coverage, "note": self.note, "per_photo": [asdict(v) for v in self.views]}  # fmt: skip


@dataclass(frozen=True)
class TexturedModel:
    """``model.glb`` in the sparse frame: a ray-casting scene, per-corner UVs (F, 3, 2) and the texture (H, W, 3) uint8."""

    scene: Any
    corner_uv: np.ndarray
    texture: np.ndarray


def load_model(run_dir: Path) -> TexturedModel:
    """The run's textured ``model.glb``, moved into the sparse frame with ``report.json``'s ``sfm_from_model``."""
    import open3d as o3d
    import trimesh

    from pipelines.evaluate import sfm_from_model

    glb = run_dir / "model.glb"
    if not glb.is_file():
        raise InvalidInput(f"no model.glb in {run_dir}; score the output folder of a finished run")
    mesh = trimesh.load(glb, force="mesh", process=False)
    image = getattr(getattr(mesh.visual, "material", None), "baseColorTexture", None)
    uv = getattr(mesh.visual, "uv", None)
    if image is None or uv is None:
        raise InvalidInput(f"{glb} has no texture (texture.enabled=false?); the photometric score needs a textured model")
    m = sfm_from_model(run_dir)
    if m is None:
        raise InvalidInput(f"report.json of {run_dir} has no sfm_from_model; cannot place model.glb in the cameras' frame")
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return TexturedModel(scene, np.asarray(uv, dtype=np.float64)[faces], np.asarray(image.convert("RGB")))


def render_view(model: TexturedModel, view: ColmapView, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB float (height, width, 3) in 0..1 and coverage mask of the model seen by ``view``, resampled to width x height."""
    import open3d as o3d

    sx, sy = view.width / width, view.height / height
    u, v = np.meshgrid((np.arange(width) + 0.5) * sx, (np.arange(height) + 0.5) * sy)  # COLMAP pixel convention
    xy = view.camera.cam_from_img(np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64))
    dirs = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ view.R  # camera -> world: R^T d, as rows
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rays = np.concatenate([np.broadcast_to(view.center, dirs.shape), dirs], axis=1).astype(np.float32)
    hit = model.scene.cast_rays(o3d.core.Tensor(rays))
    face = hit["primitive_ids"].numpy().astype(np.int64)
    ok = (face != o3d.t.geometry.RaycastingScene.INVALID_ID) & np.all(np.isfinite(xy), axis=1)
    bary = hit["primitive_uvs"].numpy()[ok].astype(np.float64)
    weights = np.stack([1.0 - bary[:, 0] - bary[:, 1], bary[:, 0], bary[:, 1]], axis=1)
    rgb = np.zeros((len(face), 3))
    rgb[ok] = sample_texture(model.texture, np.einsum("nk,nkd->nd", weights, model.corner_uv[face[ok]]))
    return rgb.reshape(height, width, 3), ok.reshape(height, width)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per pixel of two grey images in 0..1 (Wang et al. 2004: Gaussian sigma 1.5, K1 0.01, K2 0.03)."""
    import cv2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))


def score_view(model: TexturedModel, view: ColmapView, photo_path: Path) -> ViewScore:
    """PSNR, SSIM and coverage of the model rendered from ``view`` against the photo at ``photo_path``."""
    import cv2

    bgr = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInput(f"cannot read the photo {photo_path}")
    if bgr.shape[:2] != (view.height, view.width):
        raise InvalidInput(f"{photo_path} is {bgr.shape[1]}x{bgr.shape[0]} px but its camera is {view.width}x{view.height}")
    scale = max(1.0, max(view.width, view.height) / MAX_SIDE)
    width, height = round(view.width / scale), round(view.height / scale)
    photo = cv2.resize(bgr[:, :, ::-1], (width, height), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0
    rendered, mask = render_view(model, view, width, height)
    covered = float(mask.mean())
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # SSIM windows away from the model's rim
    if mask.sum() < 100 or inner.sum() < 50:
        return ViewScore(view.name, float("nan"), float("nan"), covered)
    p, r = photo[mask], rendered[mask]
    gain = np.sum(p * r, axis=0) / np.maximum(np.sum(r * r, axis=0), 1e-12)
    mse = float(np.mean((np.clip(r * gain, 0, 1) - p) ** 2))
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    grey = np.array([0.299, 0.587, 0.114])
    ssim = float(ssim_map((photo @ grey).astype(np.float32), (np.clip(rendered * gain, 0, 1) @ grey).astype(np.float32))[inner].mean())
    return ViewScore(view.name, round(float(psnr), 3), round(ssim, 4), round(covered, 4))


def _images_dir(run_dir: Path) -> Path:
    images = run_dir / "work" / "images"
    if not images.is_dir():
        raise InvalidInput(f"{images} is missing: the photometric score needs the run's working images (keep the run's work/ folder)")
    return images


def score_fit(run_dir: Path) -> PhotometricResult:
    """Every registered photo of the run against the run's own model."""
    model = load_model(run_dir)
    images = _images_dir(run_dir)
    views = load_views(run_dir / "sparse", "eval")
    return PhotometricResult("fit", [score_view(model, v, images / v.name) for v in views])


def score_held_out(run_dir: Path, full_run_dir: Path) -> PhotometricResult:
    """Photos the run did not have, at their poses from ``full_run_dir`` (a run on all photos), against this run's model."""
    model = load_model(run_dir)
    own = {v.name: v for v in load_views(run_dir / "sparse", "eval")}
    full = {v.name: v for v in load_views(full_run_dir / "sparse", "eval")}
    given = {p.name for p in _images_dir(run_dir).iterdir()}
    shared = sorted(set(own) & set(full))
    held_out = sorted(n for n in full if n not in given)
    if len(shared) < 3:
        raise InvalidInput(f"only {len(shared)} photos are placed in both runs; at least 3 are needed to align them")
    if not held_out:
        raise InvalidInput(f"every photo placed in {full_run_dir} was also given to {run_dir}: nothing was held out")
    src = np.array([full[n].center for n in shared])
    dst = np.array([own[n].center for n in shared])
    spread = float(np.linalg.norm(dst.max(axis=0) - dst.min(axis=0)))
    this_from_full, inliers = robust_similarity(src, dst, 0.02 * spread, seed=0)
    s = float(np.cbrt(np.linalg.det(this_from_full[:3, :3])))
    rot, shift = this_from_full[:3, :3] / s, this_from_full[:3, 3]
    images = _images_dir(full_run_dir)
    scores = []
    for name in held_out:
        v = full[name]
        # X_this = s rot X_full + shift, so s * x_cam = (R rot^T) X_this + (s t - R rot^T shift): the same pixels
        r_this = v.R @ rot.T
        t_this = s * v.t - r_this @ shift
        moved = ColmapView(v.name, v.camera, r_this, t_this, v.width, v.height)
        scores.append(score_view(model, moved, images / name))
    note = f"{len(held_out)} held-out photos, aligned by a similarity fitted to {int(inliers.sum())}/{len(shared)} shared camera centres"
    return PhotometricResult("held_out", scores, note)
