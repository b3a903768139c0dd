"""The simulate pipeline: a fast, honest stand-in for ``pipelines.run.reconstruct``.

Used by the service when ``RECON_PIPELINE=simulate`` (the backend's CI contract double). It walks
the same stages with the same :class:`~pipelines.run.ProgressTracker`, so status, progress and
ETA behave like a real run, but does no photogrammetry: it writes a textured box whose faces show
one of the input photos, a tiny COLMAP text model, a point cloud and a report, all marked
``"simulated": true``. It delivers the real run's file set -- ``model.glb``, ``model_mobile.glb``,
``model.usdz`` (a 1 m cube showing the photo, packaged from the committed layer
``assets/simulate_box.usdc``: valid for OpenUSD and ARKit, no usd-core needed) -- so a backend's CI
sees the real shape. A :class:`SimulateScenario` makes it fail, stall or slow down on purpose.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipelines.errors import InvalidInput, ReconstructionFailed
from pipelines.files import atomic_path, write_text_atomic
from pipelines.options import ReconOptions, options_to_dict
from pipelines.photos import PHOTO_KINDS, PhotoFolder, PhotoRefused
from pipelines.progress import CancelToken, ProgressFn
from pipelines.run import STAGE_NAMES, STAGES, ProgressTracker, ReconstructionResult

logger = logging.getLogger(__name__)

DEFAULT_TOTAL_SECONDS = 1.2
"""Simulated work of a default job (seconds), split over the stages by their weights."""
TEXTURE_SIDE = 512
"""Longest side of the texture taken from the first readable photo (px)."""
MOBILE_TEXTURE_SIDE = 256
"""Longest side of the mobile level's texture (px): smaller, as in a real run."""
USDZ_LAYER = Path(__file__).resolve().parent / "assets" / "simulate_box.usdc"
USDZ_ALIGNMENT = 64
"""ARKit reads a USDZ package in place: every file's data starts at a multiple of 64 bytes."""


@dataclass(frozen=True)
class SimulateScenario:
    """What a simulated job should play (the request's additive ``"simulate": {...}`` field)."""

    fail_at: str | None = None
    """Stage at which the job fails with ``message`` (``ReconstructionFailed``); ``None``: it succeeds."""
    message: str = "simulated failure"
    """The failure message for ``fail_at``."""
    stage_seconds: float | None = None
    """Seconds each stage takes; ``None``: about 1.2 s for the whole job, split by stage weight."""
    stall: bool = False
    """Stop making progress at ``stall_at`` until the job is cancelled (or times out)."""
    stall_at: str = "dense"
    """Stage at which ``stall`` stops."""
    duplicate_callbacks: bool = False
    """The service sends every callback of this job twice (to prove the backend is idempotent)."""
    callback_delay_s: float = 0.0
    """The service waits this long (seconds) before sending each callback of this job."""
    texture_fallback: bool = False
    """Play a texture bake that failed: the model keeps vertex colours and the job completes with
    the message ``completed without texture: ...``, as a real job does."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SimulateScenario:
        """Validate the request field; ``InvalidInput`` names the bad key (``simulate.<key>``)."""
        if data is None:
            return cls()
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidInput(f"simulate.{key}: unknown scenario key; valid keys are {', '.join(sorted(known))}")
        values = dict(data)
        for key in ("fail_at", "stall_at"):
            if key in values and values[key] is not None and values[key] not in STAGE_NAMES:
                raise InvalidInput(f"simulate.{key}: must be one of {', '.join(STAGE_NAMES)}, not {values[key]!r}")
        if "message" in values and (not isinstance(values["message"], str) or not values["message"].strip()):
            raise InvalidInput("simulate.message: must be a non-empty string")
        for key in ("stall", "duplicate_callbacks", "texture_fallback"):
            if key in values and not isinstance(values[key], bool):
                raise InvalidInput(f"simulate.{key}: must be true or false, not {values[key]!r}")
        for key, high in (("stage_seconds", 600.0), ("callback_delay_s", 60.0)):
            value = values.get(key)
            if value is None and key == "stage_seconds":
                continue
            if key in values and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high):
                raise InvalidInput(f"simulate.{key}: must be a number of seconds from 0 to {high:g}, not {value!r}")
            if key in values:
                values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconstruct(
    photos_dir: Path,
    out_dir: Path,
    options: ReconOptions,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    scenario: SimulateScenario | None = None,
) -> ReconstructionResult:
    """Pretend to reconstruct ``photos_dir`` into ``out_dir`` (same outputs and errors as the real one).

    Raises ``InvalidInput`` (too few photos, none readable), ``ReconstructionFailed`` (the
    scenario's ``fail_at``) or ``Cancelled``.
    """
    scenario = scenario or SimulateScenario()
    cancel = cancel or CancelToken()
    photos_dir = Path(photos_dir).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = ProgressTracker(progress)
    total_weight = sum(s.weight for s in STAGES)
    timings: dict[str, float] = {}
    state: dict[str, Any] = {"texture_fallback": scenario.texture_fallback}

    for stage in STAGES:
        cancel.check()
        started = time.monotonic()
        tracker.report(stage.name, 0.0, f"simulated {stage.name} started")
        seconds = scenario.stage_seconds
        if seconds is None:
            seconds = DEFAULT_TOTAL_SECONDS * stage.weight / total_weight
        _pretend_work(stage.name, seconds, tracker, cancel)
        if scenario.fail_at == stage.name:
            raise ReconstructionFailed(stage.name, scenario.message)
        if scenario.stall and scenario.stall_at == stage.name:
            logger.info("simulated stall at %s until cancelled", stage.name)
            while not cancel.wait(0.2):
                pass
            cancel.check()
        _STAGE_WORK[stage.name](photos_dir, out_dir, options, state)
        cancel.check()
        tracker.report(stage.name, 1.0, f"simulated {stage.name} done")
        timings[stage.name] = round(time.monotonic() - started, 3)

    warnings = ["completed without texture: texture baking failed: simulated (simulate.texture_fallback)"] if scenario.texture_fallback else []
    report = {
        "simulated": True,
        "warnings": warnings,
        "pipeline": "simulate",
        "note": "RECON_PIPELINE=simulate: no reconstruction was run; the model is a box textured with one input photo.",
        "scenario": scenario.to_dict(),
        "options": options_to_dict(options),
        "photos": {"found": len(state["photos"]), "texture_from": state["texture_from"]},
        "model": {"vertices": 24, "faces": 12, "texture_px": list(state["texture"].size)},
        "scale": {"source": "normalised", "metres_per_unit": 1.0, "metric": False, "detail": "simulated: a 1 m box"},
        "timings_s": timings,
    }
    report_path = write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    artifacts = {
        "model.glb": out_dir / "model.glb",
        "model_mobile.glb": out_dir / "model_mobile.glb",
        **({"model.usdz": out_dir / "model.usdz"} if options.export.usdz else {}),
        "sparse": out_dir / "sparse",
        "points.ply": out_dir / "points.ply",
        "preview.png": out_dir / "preview.png",
        "report.json": report_path,
    }
    return ReconstructionResult(out_dir, out_dir / "model.glb", report_path, artifacts, report, warnings)


def _pretend_work(stage: str, seconds: float, tracker: ProgressTracker, cancel: CancelToken) -> None:
    """Spend ``seconds`` in small steps, reporting progress and honouring cancel like a real stage."""
    steps = max(1, math.ceil(seconds / 0.1))
    for i in range(1, steps + 1):
        if cancel.wait(seconds / steps):
            cancel.check()
        tracker.report(stage, i / steps, f"simulated {stage}: {100 * i // steps}%")


def _ingest(photos_dir: Path, out_dir: Path, options: ReconOptions, state: dict[str, Any]) -> None:
    """Open every photo once like the real ingest (links and special files fail the job, oversized ones are
    skipped) and keep the first readable one as the texture."""
    import io

    from PIL import Image, ImageOps

    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # the light install has no HEIC decoder: HEIC photos count as unreadable
        pass
    with PhotoFolder.open_photos(photos_dir, max_bytes=options.ingest.max_photo_bytes) as folder:
        names = folder.names()
        if len(names) < options.ingest.min_photos:
            raise InvalidInput(f"found {len(names)} photos in {photos_dir}; at least {options.ingest.min_photos} are needed")
        texture, texture_from = None, None
        for name in names:
            try:
                data = folder.read(name).data
            except PhotoRefused as exc:
                if exc.special:
                    raise InvalidInput(f"photos_dir changed after submission: {exc}") from None
                logger.warning("simulated ingest: skipping %s", exc)
                continue
            if texture is not None:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    texture = ImageOps.exif_transpose(img).convert("RGB")
                    texture_from = name
            except (OSError, ValueError) as exc:
                logger.warning("simulated ingest: cannot read %s: %s", name, exc)
    if texture is None:
        raise InvalidInput(f"none of the {len(names)} photos in {photos_dir} could be read; upload {PHOTO_KINDS} photos")
    texture.thumbnail((TEXTURE_SIDE, TEXTURE_SIDE))
    state.update(photos=names, texture=texture, texture_from=texture_from)


def _sparse(photos_dir: Path, out_dir: Path, options: ReconOptions, state: dict[str, Any]) -> None:
    """A valid COLMAP text model: one pinhole camera, the photos on a circle looking at the box."""
    import numpy as np

    from pipelines.geometry import quaternion_from_matrix

    width, height = state["texture"].size
    focal = 1.2 * max(width, height)
    sparse = out_dir / "sparse"
    sparse.mkdir(exist_ok=True)
    write_text_atomic(sparse / "cameras.txt", f"# simulated\n1 PINHOLE {width} {height} {focal} {focal} {width / 2} {height / 2}\n")
    lines = ["# simulated: camera-from-world poses (QW QX QY QZ TX TY TZ), cameras on a circle of radius 3 m"]
    n = len(state["photos"])
    for i, photo in enumerate(state["photos"]):
        angle = 2 * math.pi * i / n
        center = np.array([3 * math.sin(angle), 1.0, 3 * math.cos(angle)])
        forward = -center / np.linalg.norm(center)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
        qw, qx, qy, qz = quaternion_from_matrix(rot)
        tx, ty, tz = -rot @ center
        lines.append(f"{i + 1} {qw:.9f} {qx:.9f} {qy:.9f} {qz:.9f} {tx:.9f} {ty:.9f} {tz:.9f} 1 {photo}")
        lines.append("")  # no 2D points
    write_text_atomic(sparse / "images.txt", "\n".join(lines) + "\n")
    write_text_atomic(sparse / "points3D.txt", "# simulated: no 3D points\n")


def _dense(photos_dir: Path, out_dir: Path, options: ReconOptions, state: dict[str, Any]) -> None:
    """A coloured point cloud sampled on the box (metres, Y up)."""
    import trimesh

    mesh = _textured_box(state["texture"])
    points, face_index = trimesh.sample.sample_surface(mesh, 2000, seed=0)
    colors = mesh.visual.to_color().vertex_colors[mesh.faces[face_index, 0]]
    with atomic_path(out_dir / "points.ply") as tmp:
        trimesh.PointCloud(points, colors=colors).export(tmp, file_type="ply")


def _noop(photos_dir: Path, out_dir: Path, options: ReconOptions, state: dict[str, Any]) -> None:
    """Stages whose simulated output is produced by a neighbour."""


def _export(photos_dir: Path, out_dir: Path, options: ReconOptions, state: dict[str, Any]) -> None:
    """``model.glb``, ``model_mobile.glb`` (glTF, Y up, metres), ``model.usdz`` and ``preview.png``, each written to a temp name and renamed."""
    small = state["texture"].copy()
    small.thumbnail((MOBILE_TEXTURE_SIDE, MOBILE_TEXTURE_SIDE))
    for name, texture in (("model.glb", state["texture"]), ("model_mobile.glb", small)):
        mesh = _textured_box(texture)
        if state["texture_fallback"]:  # what a failed bake leaves: the same surface, with vertex colours
            mesh.visual = mesh.visual.to_color()
        with atomic_path(out_dir / name) as tmp:
            mesh.export(tmp, file_type="glb")
    if options.export.usdz:
        _write_usdz(out_dir / "model.usdz", small)
    preview = state["texture"].copy()
    preview.thumbnail((256, 256))
    with atomic_path(out_dir / "preview.png") as tmp:
        preview.save(tmp, format="PNG")


def _write_usdz(path: Path, texture: Any) -> None:
    """A USDZ package: the committed cube layer and the photo as ``texture.jpg``, stored, 64-byte aligned."""
    import io
    import zipfile

    jpeg = io.BytesIO()
    texture.convert("RGB").save(jpeg, format="JPEG", quality=85)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as package:
        for name, data in (("model.usdc", USDZ_LAYER.read_bytes()), ("texture.jpg", jpeg.getvalue())):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            start = package.fp.tell() + 30 + len(name)  # the local header is 30 bytes, then the name  # type: ignore[union-attr]
            pad = -start % USDZ_ALIGNMENT
            if pad:  # an extra field (id, size, zeros) moves the data to the boundary; it needs at least 4 bytes
                pad += USDZ_ALIGNMENT if pad < 4 else 0
                info.extra = (0x1986).to_bytes(2, "little") + (pad - 4).to_bytes(2, "little") + bytes(pad - 4)
            package.writestr(info, data)


def _textured_box(texture: Any) -> Any:
    """A box 1 m tall, standing on y=0, whose six faces each show the whole ``texture``."""
    import numpy as np
    import trimesh

    width = min(2.0, max(0.5, texture.size[0] / texture.size[1]))
    box = trimesh.creation.box(extents=(width, 1.0, width))
    box.apply_translation((0.0, 0.5, 0.0))
    vertices, faces, uvs = [], [], []
    corners_uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    for normal in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        n = np.array(normal, dtype=float)
        u_axis = np.cross([0.0, 1.0, 0.0], n) if abs(n[1]) < 0.5 else np.array([1.0, 0.0, 0.0])
        v_axis = np.cross(n, u_axis)
        half = box.extents / 2
        center = box.bounds.mean(axis=0) + n * half
        quad = [center + (su * u_axis + sv * v_axis) * half for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        base = len(vertices)
        vertices.extend(quad)
        uvs.extend(corners_uv)
        faces.extend([[base, base + 1, base + 2], [base, base + 2, base + 3]])
    visual = trimesh.visual.TextureVisuals(uv=np.array(uvs), image=texture)
    return trimesh.Trimesh(np.array(vertices), np.array(faces), visual=visual, process=False)


_STAGE_WORK = {
    "ingest": _ingest,
    "features": _noop,
    "matching": _noop,
    "sparse": _sparse,
    "dense": _dense,
    "mesh": _noop,
    "texture": _noop,
    "export": _export,
}
