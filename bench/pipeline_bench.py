"""Pipeline benchmark: fixtures × presets → bench/results.md and bench/results.json.

Each run is a separate ``recon run`` process, so its peak memory (max RSS of the process, children
included, from ``wait4``) and its wall time are those of a real job. Quality comes from
``recon eval`` against the fixture's ground truth. The sparse stage is also timed alone, next to
plain COLMAP (the ``colmap`` binary, when installed: ``apt-get install colmap``) on the same photos.

    python -m bench.pipeline_bench                       # the default matrix (about 10 min on 2 cores)
    python -m bench.pipeline_bench --scenes tabletop --presets preview balanced
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import kept_sections
from fixtures.scenes import make_scene

ROOT = Path(__file__).resolve().parent.parent
# (scene, preset) pairs of the default matrix: both presets where the preview speed-up is
# measured, balanced alone on the 50-photo 1600 px scene (the memory target).
DEFAULT_MATRIX = (
    ("tabletop_small", "preview"),
    ("tabletop_small", "balanced"),
    ("tabletop", "preview"),
    ("tabletop", "balanced"),
    ("tabletop_large", "balanced"),
)


@dataclass
class RunRecord:
    scene: str
    preset: str
    ok: bool
    wall_seconds: float
    peak_rss_mb: float
    exit_code: int
    error: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    photos: int = 0
    registered: int = 0
    fscore_1pct: float | None = None
    fscore_05pct: float | None = None
    faces: int | None = None
    glb_mb: float | None = None


def _run_measured(cmd: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS in MiB of it and its children)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024.0


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def bench_pipeline(scene: str, preset: str, work: Path) -> RunRecord:
    scene_dir = make_scene(scene)
    out = work / f"{scene}-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    code, wall, rss = _run_measured(
        [_bin("recon"), "run", str(scene_dir / "images"), "--out", str(out), "--preset", preset, "--json"],
        work / f"{scene}-{preset}.log",
    )
    record = RunRecord(scene, preset, code == 0, round(wall, 1), round(rss, 1), code)
    if code != 0:
        lines = (work / f"{scene}-{preset}.log").read_text().strip().splitlines()
        record.error = lines[-1] if lines else f"exit code {code}"
        return record
    report = json.loads((out / "report.json").read_text())
    record.stage_seconds = report.get("seconds", {})
    record.photos = len(report.get("ingest", {}).get("photos", [])) or report.get("ingest", {}).get("num_photos", 0)
    record.registered = report.get("sparse", {}).get("num_registered", 0)
    record.faces = report.get("mesh", {}).get("faces")
    record.glb_mb = round((out / "model.glb").stat().st_size / 2**20, 2)
    evaluation = subprocess.run(
        [_bin("recon"), "eval", str(out), "--gt", str(scene_dir), "--json"], capture_output=True, text=True
    )
    if evaluation.returncode == 0:
        metrics = json.loads(evaluation.stdout)
        fscores = {round(s["tau_fraction"], 4): s["fscore"] for s in metrics.get("surface", [])}
        record.fscore_1pct = fscores.get(0.01)
        record.fscore_05pct = fscores.get(0.005)
        record.photos = metrics.get("photos_total", record.photos)
        record.registered = metrics.get("photos_registered", record.registered)
    else:
        record.error = f"eval failed: {evaluation.stderr.strip()[-300:]}"
    return record


def bench_sparse_vs_colmap(scene: str, work: Path) -> dict[str, Any]:
    """Our ingest+features+matching+sparse stages against plain COLMAP on the same photos."""
    from pipelines import ingest, sfm
    from pipelines.options import build_options
    from pipelines.progress import CancelToken, no_progress

    scene_dir = make_scene(scene)
    options = build_options("balanced")
    cancel = CancelToken()
    base = work / f"sparse-{scene}"
    shutil.rmtree(base, ignore_errors=True)
    start = time.perf_counter()
    ing = ingest.run(scene_dir / "images", base / "images", options.ingest, no_progress, cancel)
    feats = sfm.extract_features(ing, base / "sfm", options.sfm, no_progress, cancel)
    matches = sfm.match_features(feats, options.sfm, no_progress, cancel)
    sparse = sfm.reconstruct_sparse(matches, base / "sparse", options.sfm, no_progress, cancel)
    ours = time.perf_counter() - start
    result: dict[str, Any] = {
        "scene": scene,
        "ours_seconds": round(ours, 1),
        "ours_registered": len(sparse.registered),
    }
    colmap = shutil.which("colmap")
    if colmap is None:
        result["colmap"] = "not installed (apt-get install colmap to compare)"
        return result
    cdir = base / "colmap"
    (cdir / "sparse").mkdir(parents=True)
    db = cdir / "database.db"
    start = time.perf_counter()
    steps = [
        [colmap, "feature_extractor", "--database_path", str(db), "--image_path", str(scene_dir / "images"),
         "--ImageReader.single_camera", "1", "--SiftExtraction.use_gpu", "0"],
        [colmap, "exhaustive_matcher", "--database_path", str(db), "--SiftMatching.use_gpu", "0"],
        [colmap, "mapper", "--database_path", str(db), "--image_path", str(scene_dir / "images"),
         "--output_path", str(cdir / "sparse")],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
        if done.returncode != 0:
            result["colmap"] = f"failed at {step[1]}: {done.stderr.strip()[-200:]}"
            return result
    result["colmap_seconds"] = round(time.perf_counter() - start, 1)
    result["colmap_version"] = subprocess.run([colmap, "help"], capture_output=True, text=True).stdout.splitlines()[0:1]
    return result


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_results(records: list[RunRecord], sparse: list[dict[str, Any]], out_dir: Path) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_description()
    (out_dir / "results.json").write_text(
        json.dumps({"date": when, "machine": machine, "runs": [asdict(r) for r in records], "sparse": sparse}, indent=2) + "\n"
    )
    stages = ("ingest", "features", "matching", "sparse", "dense", "mesh", "texture", "export")
    lines = [
        "# Pipeline benchmark",
        "",
        f"Measured {when} on {machine}. Produced by `make bench` (`python -m bench.pipeline_bench`).",
        "",
        "| scene | preset | ok | wall s | peak RSS MiB | registered | F@1% | F@0.5% | faces | GLB MiB | " + " | ".join(stages) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(stages),
    ]
    for r in records:
        f1 = "" if r.fscore_1pct is None else f"{r.fscore_1pct:.3f}"
        f05 = "" if r.fscore_05pct is None else f"{r.fscore_05pct:.3f}"
        per_stage = " | ".join(f"{r.stage_seconds.get(s, 0):.1f}" for s in stages)
        lines.append(
            f"| {r.scene} | {r.preset} | {'yes' if r.ok else 'NO: ' + r.error} | {r.wall_seconds} | {r.peak_rss_mb} | "
            f"{r.registered}/{r.photos} | {f1} | {f05} | {r.faces or ''} | {r.glb_mb or ''} | {per_stage} |"
        )
    if sparse:
        lines += ["", "## Sparse stage alone (ingest + features + matching + mapping) vs plain COLMAP", "",
                  "| scene | ours s | ours registered | COLMAP s | note |", "|---|---|---|---|---|"]
        for s in sparse:
            lines.append(f"| {s['scene']} | {s['ours_seconds']} | {s['ours_registered']} | {s.get('colmap_seconds', '')} | "
                         f"{s.get('colmap', '') if isinstance(s.get('colmap'), str) else ''} |")
    kept = kept_sections(out_dir / "results.md")  # what other benchmarks wrote there (make bench-scale)
    (out_dir / "results.md").write_text("\n".join(lines) + "\n" + kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", help="scenes to run (default: the built-in matrix)")
    parser.add_argument("--presets", nargs="+", default=["preview", "balanced"], help="presets, with --scenes")
    parser.add_argument("--sparse-scene", default="tabletop", help="scene for the sparse-vs-COLMAP timing ('' to skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recon-bench-"))
    matrix = [(s, p) for s in args.scenes for p in args.presets] if args.scenes else list(DEFAULT_MATRIX)
    records = []
    for scene, preset in matrix:
        record = bench_pipeline(scene, preset, work)
        print(json.dumps(asdict(record)), flush=True)
        records.append(record)
    sparse = [bench_sparse_vs_colmap(args.sparse_scene, work)] if args.sparse_scene else []
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(records, sparse, args.out)
    print(f"wrote {args.out / 'results.md'} (work files in {work})")
    return 0 if all(r.ok for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
