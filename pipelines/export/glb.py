"""Export (stage 7): the upright, centred GLB the app shows, its thumbnail, and the way back to SfM.

glTF conventions: +Y is up, the model stands on y = 0 and its bounding box is centred on x = z = 0.
"Up" is the mean of the cameras' up directions (people hold phones upright), replaced by the
normal of the dominant ground plane when one agrees with it within ``GROUND_MAX_TILT_DEG``. The
model is turned about +Y so that the first photo was taken from the +Z side (what glTF viewers
show first). Units are the sparse model's (no scaling), so ``sfm_from_model`` -- the 4x4 matrix
taking GLB coordinates back into the ``sparse/`` frame -- is a rotation plus a translation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import SparseModel, Textured
from pipelines.errors import ReconstructionFailed
from pipelines.export import preview
from pipelines.files import write_bytes_atomic, write_png
from pipelines.geometry import sample_surface
from pipelines.progress import CancelToken, StageProgress
from pipelines.views import ColmapView, load_views

logger = logging.getLogger(__name__)

GROUND_MAX_TILT_DEG = 30.0
"""A plane whose normal is farther than this from the cameras' up is not the ground."""
GROUND_MIN_SHARE = 0.1
"""The ground plane must hold at least this share of the surface area."""
PREVIEW_SIZE = 512
JPEG_QUALITY = 90
"""Quality of the base-colour texture embedded in the GLB (JPEG keeps phone downloads small)."""


@dataclass(frozen=True)
class ExportResult:
    glb_path: Path
    preview_path: Path
    sfm_from_model: list[list[float]]
    """4x4 row-major similarity: ``x_sfm = M @ [x_glb, 1]``."""
    up_source: str
    """``"cameras"`` or ``"ground plane"``: what decided the +Y axis."""
    glb_bytes: int
    textured: bool
    num_vertices: int
    num_faces: int
    extent: list[float]
    """Size of the model's bounding box along x, y, z (model units)."""

    def summary(self) -> dict[str, Any]:
        return {
            "glb_bytes": self.glb_bytes,
            "textured": self.textured,
            "up_source": self.up_source,
            "sfm_from_model": self.sfm_from_model,
            "vertices": self.num_vertices,
            "faces": self.num_faces,
            "extent": [round(e, 6) for e in self.extent],
        }


def run(textured: Textured, sparse: SparseModel, out_dir: Path, progress: StageProgress, cancel: CancelToken) -> ExportResult:
    """Write ``out_dir/model.glb`` (validated by reloading it) and ``out_dir/preview.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(0.0, "reading textured mesh")
    with np.load(textured.mesh) as data:
        vertices, faces, normals, colours = data["vertices"], data["faces"], data["normals"], data["colors"]
        uv = data["uv"] if textured.textured and "uv" in data else None
    texture = _read_texture(textured.texture_path) if uv is not None else None
    views = load_views(Path(sparse.sparse_dir), "export")
    cancel.check()

    up, up_source = gravity_up(vertices, faces, views)
    rotation = _model_rotation(up, vertices, views)
    turned = np.einsum("ij,kj->ik", vertices, rotation)  # einsum: no BLAS thread contention
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    shift = -np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    model_vertices = turned + shift
    model_from_sfm = np.eye(4)
    model_from_sfm[:3, :3], model_from_sfm[:3, 3] = rotation, shift
    sfm_from_model = np.linalg.inv(model_from_sfm)
    progress(0.3, f"up from the {up_source}; writing GLB")
    cancel.check()

    glb_path = out_dir / "model.glb"
    model_normals = np.einsum("ij,kj->ik", normals, rotation)
    length = np.linalg.norm(model_normals, axis=1, keepdims=True)
    model_normals = np.where(length > 1e-6, model_normals / np.maximum(length, 1e-6), [0.0, 1.0, 0.0])  # glTF wants unit normals
    _write_glb(glb_path, model_vertices, faces, model_normals, colours, uv, texture)
    _validate_glb(glb_path, len(faces), texture is not None)
    progress(0.7, "rendering preview")
    cancel.check()

    frame = _subject_box(model_vertices, faces) if up_source == "ground plane" else None
    image = preview.render(model_vertices, faces, uv=uv, texture=texture, vertex_colors=colours, size=PREVIEW_SIZE, frame=frame)
    preview_path = write_png(out_dir / "preview.png", image)
    result = ExportResult(
        glb_path=glb_path,
        preview_path=preview_path,
        sfm_from_model=[[float(x) for x in row] for row in sfm_from_model],
        up_source=up_source,
        glb_bytes=glb_path.stat().st_size,
        textured=texture is not None,
        num_vertices=len(model_vertices),
        num_faces=len(faces),
        extent=[float(x) for x in hi - lo],
    )
    logger.info("export: %s", {k: v for k, v in result.summary().items() if k != "sfm_from_model"})
    progress(1.0, f"model.glb written ({result.glb_bytes / 1e6:.1f} MB)")
    return result


def gravity_up(vertices: np.ndarray, faces: np.ndarray, views: list[ColmapView]) -> tuple[np.ndarray, str]:
    """The world's up direction (unit, sparse frame) and what decided it.

    Starts from the mean of the cameras' up vectors (their -y axes); if one of the three largest
    planes of the surface (RANSAC on area-uniform samples) is within ``GROUND_MAX_TILT_DEG`` of it
    and holds ``GROUND_MIN_SHARE`` of the area, its normal -- pointing to the cameras' side -- wins.
    """
    import open3d as o3d

    camera_up = np.mean([v.up for v in views], axis=0)
    if np.linalg.norm(camera_up) < 1e-6:  # cameras disagree completely; any choice is a guess
        camera_up = views[0].up
    camera_up = camera_up / np.linalg.norm(camera_up)

    rng = np.random.default_rng(0)
    samples = sample_surface(vertices, faces, 30_000, rng)
    diagonal = float(np.linalg.norm(samples.max(axis=0) - samples.min(axis=0)))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(samples))
    o3d.utility.random.seed(0)  # the same mesh always gives the same model frame
    total = len(samples)
    for _ in range(3):
        if len(pcd.points) < 3 or len(pcd.points) < GROUND_MIN_SHARE * total:
            break
        plane, inliers = pcd.segment_plane(distance_threshold=0.005 * diagonal, ransac_n=3, num_iterations=300)
        normal = np.asarray(plane[:3], dtype=np.float64)
        normal /= np.linalg.norm(normal)
        if normal @ camera_up < 0:
            normal = -normal
        tilt = np.degrees(np.arccos(np.clip(normal @ camera_up, -1.0, 1.0)))
        share = len(inliers) / total
        if share < GROUND_MIN_SHARE:
            break
        if tilt <= GROUND_MAX_TILT_DEG:
            logger.info("ground plane: %.0f %% of the surface, %.1f deg from the cameras' up", 100 * share, tilt)
            return normal, "ground plane"
        pcd = pcd.select_by_index(inliers, invert=True)
    return camera_up, "cameras"


def _model_rotation(up: np.ndarray, vertices: np.ndarray, views: list[ColmapView]) -> np.ndarray:
    """Rotation (rows = model axes in sparse coordinates): +Y = up, +Z towards the first photo."""
    y = up / np.linalg.norm(up)
    towards = views[0].center - vertices.mean(axis=0)
    z = towards - (towards @ y) * y
    if np.linalg.norm(z) < 1e-9 * max(1.0, np.linalg.norm(towards)):  # first photo straight above
        z = -views[0].up - (-views[0].up @ y) * y
    if np.linalg.norm(z) < 1e-12:
        z = np.cross(y, [1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.cross(y, [0.0, 0.0, 1.0])
    z /= np.linalg.norm(z)
    x = np.cross(y, z)
    return np.stack([x, y, z])


def _subject_box(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Box around what stands on the ground (model frame, y up), for framing the preview.

    A wide ground patch would otherwise make the subject a speck in the thumbnail. ``None`` when
    nothing rises clearly above the ground.
    """
    points = sample_surface(vertices, faces, 20_000, np.random.default_rng(0))
    height = np.percentile(points[:, 1], 99)  # robust to a few spikes
    above = points[points[:, 1] > 0.25 * height]  # clear of a wavy or noisy ground
    if len(above) < 100 or height <= 0:
        return None
    lo, hi = np.percentile(above, 1, axis=0), np.percentile(above, 99, axis=0)
    lo[1] = 0.0
    margin = 0.15 * (hi - lo)
    return lo - margin, hi + margin


def _read_texture(path: Path | None) -> np.ndarray:
    import cv2

    if path is None or not Path(path).is_file():
        raise ReconstructionFailed("export", f"the texture {path} is missing; rerun the texture stage")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReconstructionFailed("export", f"cannot read the texture {path}; rerun the texture stage")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _write_glb(path: Path, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, colours: np.ndarray, uv: np.ndarray | None, texture: np.ndarray | None) -> None:
    """One mesh, one material: a base-colour texture (JPEG) or vertex colours; written atomically."""
    import trimesh
    from PIL import Image

    if texture is not None and uv is not None:
        image = Image.fromarray(texture, mode="RGB")
        image.format = "JPEG"  # trimesh embeds images whose format is JPEG as JPEG, others as PNG
        image.encoderinfo = {"quality": JPEG_QUALITY}
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True)
        visual: Any = trimesh.visual.TextureVisuals(uv=uv, material=material)
    else:
        rgba = np.concatenate([np.clip(colours * 255.0 + 0.5, 0, 255), np.full((len(colours), 1), 255.0)], axis=1).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=rgba)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, visual=visual, process=False)
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    write_bytes_atomic(path, data)


def _validate_glb(path: Path, num_faces: int, textured: bool) -> None:
    """Reload the GLB and check it holds the mesh (and its texture); remove it and fail otherwise."""
    import trimesh

    problem = None
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
        if len(mesh.faces) != num_faces or not np.all(np.isfinite(mesh.vertices)):
            problem = f"it holds {len(mesh.faces)} faces instead of {num_faces}"
        elif textured:
            image = getattr(getattr(mesh.visual, "material", None), "baseColorTexture", None)
            if image is None or getattr(mesh.visual, "uv", None) is None:
                problem = "its texture did not survive the round trip"
    except Exception as exc:  # any reader error means the file is unusable
        problem = f"trimesh cannot read it back ({type(exc).__name__}: {exc})"
    if problem:
        path.unlink(missing_ok=True)
        raise ReconstructionFailed("export", f"the written model.glb is invalid: {problem}; rerun with texture.enabled=false and report this job")
