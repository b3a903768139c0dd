"""Export (stage 7): what the app receives, in metres, in the model frame (see :mod:`pipelines.export.frame`).

Files in ``out_dir``: ``model.glb`` (the full level, what ``model_uri`` points to),
``model_mobile.glb`` (at most ``export.mobile_max_faces`` triangles, a ``mobile_texture_size``
texture baked again for it, :mod:`pipelines.export.lod`), ``model.usdz`` (the mobile level for AR
Quick Look, :mod:`pipelines.export.usdz`; ``export.usdz``) and ``preview.png``. The size comes
from :mod:`pipelines.export.scale`; ``sfm_from_model`` -- the 4x4 matrix taking model coordinates
back into the ``sparse/`` frame -- is then a similarity: ``x_sfm = M @ [x_model, 1]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import SparseModel, Textured
from pipelines.errors import ReconstructionFailed
from pipelines.export import preview
from pipelines.export.frame import gravity_up, model_rotation, subject_box
from pipelines.export.glb import read_texture, validate_glb, write_glb
from pipelines.export.lod import Level, mobile_level
from pipelines.export.scale import Scale, metric_scale
from pipelines.files import write_png
from pipelines.options import ExportOptions
from pipelines.progress import CancelToken, StageProgress
from pipelines.views import load_views

logger = logging.getLogger(__name__)

PREVIEW_SIZE = 512
MODEL_FILES: tuple[str, ...] = ("model.glb", "model_mobile.glb", "model.usdz")
"""The deliverables a failed run must not leave behind (a half-finished run's model would look usable)."""


@dataclass(frozen=True)
class FileStats:
    """One delivered model file."""

    path: Path
    bytes: int
    faces: int
    texture_size: int
    """Side of its texture (px); 0 when it has vertex colours."""
    seconds: float
    """Time spent making and checking it."""

    def summary(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "faces": self.faces, "texture_size": self.texture_size, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class ExportResult:
    glb_path: Path
    preview_path: Path
    sfm_from_model: list[list[float]]
    """4x4 row-major similarity: ``x_sfm = M @ [x_model, 1]`` (model in metres)."""
    up_source: str
    """``"cameras"`` or ``"ground plane"``: what decided the +Y axis."""
    scale: Scale
    glb_bytes: int
    textured: bool
    num_vertices: int
    num_faces: int
    extent: list[float]
    """Size of the model's bounding box along x, y, z (metres)."""
    files: dict[str, FileStats] = field(default_factory=dict)
    """``model.glb``, ``model_mobile.glb`` and (with ``export.usdz``) ``model.usdz``."""

    @property
    def mobile_glb_path(self) -> Path:
        return self.files["model_mobile.glb"].path

    @property
    def usdz_path(self) -> Path | None:
        return self.files["model.usdz"].path if "model.usdz" in self.files else None

    def summary(self) -> dict[str, Any]:
        return {
            "glb_bytes": self.glb_bytes,
            "textured": self.textured,
            "up_source": self.up_source,
            "scale": self.scale.summary(),
            "units": "metres" if self.scale.metric else "normalised (arbitrary unit)",
            "sfm_from_model": self.sfm_from_model,
            "vertices": self.num_vertices,
            "faces": self.num_faces,
            "extent": [round(e, 6) for e in self.extent],
            "files": {name: stats.summary() for name, stats in self.files.items()},
        }


def run(
    textured: Textured,
    sparse: SparseModel,
    gps: Mapping[str, tuple[float, float, float]],
    out_dir: Path,
    options: ExportOptions,
    progress: StageProgress,
    cancel: CancelToken,
) -> ExportResult:
    """Write the model files and ``preview.png`` into ``out_dir``; ``gps`` maps image names to (lat, lon, alt)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(0.0, "reading textured mesh")
    with np.load(textured.mesh) as data:
        vertices, faces, normals, colours = data["vertices"], data["faces"].astype(np.int64), data["normals"], data["colors"]
        uv = data["uv"] if textured.textured and "uv" in data else None
    texture = read_texture(textured.texture_path) if uv is not None else None
    views = load_views(Path(sparse.sparse_dir), "export")
    cancel.check()

    up, up_source = gravity_up(vertices, faces, views)
    rotation = model_rotation(up, vertices, views)
    turned = np.einsum("ij,kj->ik", vertices, rotation)  # einsum: no BLAS thread contention
    subject = subject_box(turned - [0.0, turned[:, 1].min(), 0.0], faces, margin=0.0) if up_source == "ground plane" else None
    measured = "the subject above the ground" if subject is not None else "the whole model"
    box = subject[1] - subject[0] if subject is not None else turned.max(axis=0) - turned.min(axis=0)
    scale = metric_scale(float(np.max(box)), measured, views, gps, options.real_size_m)
    turned *= scale.metres_per_unit
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    shift = -np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    model_from_sfm = np.eye(4)
    model_from_sfm[:3, :3], model_from_sfm[:3, 3] = scale.metres_per_unit * rotation, shift
    sfm_from_model = np.linalg.inv(model_from_sfm)
    model_normals = np.einsum("ij,kj->ik", normals, rotation)
    length = np.linalg.norm(model_normals, axis=1, keepdims=True)
    model_normals = np.where(length > 1e-6, model_normals / np.maximum(length, 1e-6), [0.0, 1.0, 0.0])  # glTF wants unit normals
    full = Level(turned + shift, faces, model_normals, colours.astype(np.float64), uv, texture)
    progress(0.1, f"up from the {up_source}; scale: {scale.source}; writing model.glb")
    cancel.check()

    files: dict[str, FileStats] = {}
    files["model.glb"] = _timed(lambda: _glb(out_dir / "model.glb", full), full)
    progress(0.3, f"simplifying to at most {options.mobile_max_faces} faces for model_mobile.glb")
    cancel.check()
    started = time.monotonic()
    mobile = mobile_level(full, options.mobile_max_faces, options.mobile_texture_size, cancel)
    files["model_mobile.glb"] = _timed(lambda: _glb(out_dir / "model_mobile.glb", mobile), mobile, started)
    progress(0.75, "writing model.usdz" if options.usdz else "rendering preview")
    cancel.check()
    if options.usdz:
        files["model.usdz"] = _timed(lambda: _usdz(out_dir / "model.usdz", mobile), mobile)
        progress(0.85, "rendering preview")
        cancel.check()

    frame = subject_box(full.vertices, faces) if up_source == "ground plane" else None
    image = preview.render(full.vertices, faces, uv=uv, texture=texture, vertex_colors=colours, size=PREVIEW_SIZE, frame=frame)
    preview_path = write_png(out_dir / "preview.png", image)
    result = ExportResult(
        glb_path=out_dir / "model.glb",
        preview_path=preview_path,
        sfm_from_model=[[float(x) for x in row] for row in sfm_from_model],
        up_source=up_source,
        scale=scale,
        glb_bytes=files["model.glb"].bytes,
        textured=texture is not None,
        num_vertices=len(full.vertices),
        num_faces=len(faces),
        extent=[float(x) for x in hi - lo],
        files=files,
    )
    logger.info("export: %s", {k: v for k, v in result.summary().items() if k != "sfm_from_model"})
    progress(1.0, ", ".join(f"{name} {stats.bytes / 1e6:.1f} MB" for name, stats in files.items()))
    return result


def _timed(write: Any, level: Level, started: float | None = None) -> FileStats:
    started = time.monotonic() if started is None else started
    path = write()
    return FileStats(path, path.stat().st_size, len(level.faces), level.texture_size, time.monotonic() - started)


def _glb(path: Path, level: Level) -> Path:
    write_glb(path, level)
    validate_glb(path, len(level.faces), level.texture is not None)
    return path


def _usdz(path: Path, level: Level) -> Path:
    from pipelines.export.usdz import validation_errors, write_usdz

    write_usdz(path, level)
    errors = validation_errors(path)
    if errors:
        path.unlink(missing_ok=True)
        raise ReconstructionFailed("export", f"the written model.usdz fails OpenUSD's validators ({'; '.join(errors[:3])}); rerun with export.usdz=false and report this job")
    return path
