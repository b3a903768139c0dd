"""``reconstruct()``: orders the stages, turns their progress into overall progress, writes the report.

Stages talk through files in ``out_dir/work`` (images, COLMAP database, depth maps, meshes), so
each can be rerun or inspected alone. The final artifacts land in ``out_dir``:
``model.glb``, ``model_mobile.glb``, ``model.usdz``, ``sparse/``, ``points.ply``, ``preview.png``,
``report.json``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import ReconError, ReconstructionFailed
from pipelines.options import ReconOptions
from pipelines.progress import CancelToken, EtaEstimator, ProgressEvent, ProgressFn, StageProgress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str
    """The service contract's status while this stage runs."""
    weight: float
    """Share of a typical run's wall time (measured on the balanced preset, 2 CPU cores)."""


STAGES: tuple[Stage, ...] = (
    # Shares of wall time measured on the 24-photo 1024x768 fixture, balanced preset, 2 CPU cores
    # (bench/results.md, 2026-11-25): overall progress is then close to linear in time.
    Stage("ingest", "processing", 0.01),
    Stage("features", "processing", 0.08),
    Stage("matching", "processing", 0.13),
    Stage("sparse", "processing", 0.05),
    Stage("dense", "processing", 0.24),
    Stage("mesh", "meshing", 0.25),
    Stage("texture", "texturing", 0.22),
    Stage("export", "texturing", 0.10),  # 2026-12-01: with the mobile level and USDZ, ~5 s of a 42 s balanced job
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
MODEL_FILES: tuple[str, ...] = ("model.glb", "model_mobile.glb", "model.usdz")
"""The deliverables a failed run must not leave behind (a half-finished run's model would look usable)."""
ARTIFACT_NAMES: tuple[str, ...] = ("model.glb", "model_mobile.glb", "model.usdz", "sparse", "points.ply", "preview.png", "report.json")
"""What a finished run delivers, in this order (``model.usdz`` only with ``export.usdz``)."""
PHASE_OF_STAGE: dict[str, str] = {s.name: s.phase for s in STAGES}


@dataclass
class ReconstructionResult:
    """What a finished run produced; every path is inside ``out_dir``."""

    out_dir: Path
    model_path: Path
    report_path: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What a person should know about a run that succeeded anyway (e.g. it fell back to vertex colours)."""


class ProgressTracker:
    """Maps per-stage fractions onto one monotonic overall fraction with an ETA."""

    def __init__(self, progress: ProgressFn | None, stages: tuple[Stage, ...] = STAGES) -> None:
        self._progress = progress
        self._stages = stages
        total = sum(s.weight for s in stages)
        self._start_of: dict[str, float] = {}
        acc = 0.0
        for s in stages:
            self._start_of[s.name] = acc / total
            acc += s.weight
        self._weight_of = {s.name: s.weight / total for s in stages}
        self._phase_of = {s.name: s.phase for s in stages}
        self._eta = EtaEstimator()
        self._last = 0.0

    def elapsed(self) -> float:
        return self._eta.elapsed()

    def for_stage(self, stage: str) -> StageProgress:
        def report(fraction: float, message: str) -> None:
            self.report(stage, fraction, message)

        return report

    def report(self, stage: str, stage_fraction: float, message: str) -> None:
        stage_fraction = min(1.0, max(0.0, float(stage_fraction)))
        overall = self._start_of[stage] + self._weight_of[stage] * stage_fraction
        # Never report 1.0 before the run has really finished; never go backwards.
        overall = min(0.999, max(self._last, overall))
        self._last = overall
        if self._progress is not None:
            self._progress(
                ProgressEvent(
                    stage=stage,
                    phase=self._phase_of[stage],
                    fraction=overall,
                    stage_fraction=stage_fraction,
                    message=message,
                    eta_seconds=self._eta.eta(overall),
                    elapsed_seconds=self.elapsed(),
                )
            )


def reconstruct(
    photos_dir: Path,
    out_dir: Path,
    options: ReconOptions,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> ReconstructionResult:
    """Turn a folder of photos into a textured GLB plus research artifacts in ``out_dir``.

    Raises ``InvalidInput`` (unusable photos/options), ``ReconstructionFailed`` (a stage could
    not produce a result) or ``Cancelled``. On any error no model file (:data:`MODEL_FILES`) is
    left in ``out_dir``, even one a late step (the report) already had written.
    """
    out_dir = Path(out_dir).resolve()
    try:
        return _reconstruct(Path(photos_dir).resolve(), out_dir, options, progress, cancel or CancelToken())
    except BaseException:
        for name in MODEL_FILES:
            (out_dir / name).unlink(missing_ok=True)
        raise


def _reconstruct(photos_dir: Path, out_dir: Path, options: ReconOptions, progress: ProgressFn | None, cancel: CancelToken) -> ReconstructionResult:
    from pipelines import dense, export, ingest, mesh, report, sfm, texture

    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    tracker = ProgressTracker(progress)
    timings = report.StageTimings()

    def stage(name: str, fn: Callable[[StageProgress], Any]) -> Any:
        cancel.check()
        tracker.report(name, 0.0, f"{name} started")
        logger.info("stage %s started", name)
        with timings.measure(name):
            try:
                result = fn(tracker.for_stage(name))
            except (ReconError, MemoryError):
                raise
            except Exception as exc:  # a bug or a library failure: name the stage, keep the cause
                logger.exception("stage %s crashed", name)
                raise ReconstructionFailed(name, f"unexpected error: {type(exc).__name__}: {exc}") from exc
        cancel.check()
        tracker.report(name, 1.0, f"{name} done")
        logger.info("stage %s done in %.1f s", name, timings.seconds[name])
        return result

    ing = stage("ingest", lambda p: ingest.run(photos_dir, work / "images", options.ingest, p, cancel))
    feats = stage("features", lambda p: sfm.extract_features(ing, work / "sfm", options.sfm, p, cancel))
    matches = stage("matching", lambda p: sfm.match_features(feats, options.sfm, p, cancel))
    sparse = stage("sparse", lambda p: sfm.reconstruct_sparse(matches, out_dir / "sparse", options.sfm, p, cancel))
    points = stage("dense", lambda p: dense.run(sparse, work / "dense", out_dir / "points.ply", options.dense, p, cancel))
    surface = stage("mesh", lambda p: mesh.run(points, sparse, work / "mesh", options.mesh, p, cancel))
    textured = stage("texture", lambda p: texture.run(surface, sparse, work / "texture", options.texture, p, cancel))
    exported = stage("export", lambda p: export.run(textured, sparse, feats.gps, out_dir, options.export, p, cancel))

    rep = report.build(
        options=options,
        ingest=ing,
        features=feats,
        matching=matches,
        sparse=sparse,
        dense=points,
        mesh=surface,
        texture=textured,
        export=exported,
        timings=timings,
    )
    warnings = []
    if options.texture.enabled and not textured.textured:
        warnings.append(f"completed without texture: {textured.fallback_reason}")
    rep["scale"] = exported.scale.summary()  # also under export: what the app needs first, at the top
    rep["warnings"] = warnings
    report_path = report.write(rep, out_dir / "report.json")
    found = {name: out_dir / name for name in ARTIFACT_NAMES if (out_dir / name).exists()}
    return ReconstructionResult(out_dir, exported.glb_path, report_path, found, rep, warnings)


def remove_partial_output(out_dir: Path) -> None:
    """Remove what a failed or cancelled run left behind (used by the service on cancel)."""
    shutil.rmtree(out_dir, ignore_errors=True)


