"""What the app receives, measured: size, triangles, texture and seconds of each model file → bench/results.md.

One ``recon run`` per scene and preset (a real job's process); the numbers come from its
``report.json`` (``export.files``, ``seconds``). "Added" is what the mobile level and the USDZ cost
on top of the rest of the job (the target: at most 15 % of a balanced job).

    python -m bench.deliverables                                  # tabletop_small and portrait_gps, balanced
    python -m bench.deliverables --scenes tabletop --presets balanced
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import replace_section
from fixtures.scenes import make_scene

ROOT = Path(__file__).resolve().parent.parent
SECTION = "bench-deliverables"
FILES = ("model.glb", "model_mobile.glb", "model.usdz")


def run(scene: str, preset: str, work: Path) -> dict[str, Any]:
    scene_dir = make_scene(scene)
    out = work / f"{scene}-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    recon = str(Path(sys.executable).with_name("recon"))
    done = subprocess.run([recon, "run", str(scene_dir / "images"), "--out", str(out), "--preset", preset, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        return {"scene": scene, "preset": preset, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    report = json.loads((out / "report.json").read_text())
    files = report["export"]["files"]
    total = float(report["total_seconds"])
    extra = sum(files[name]["seconds"] for name in ("model_mobile.glb", "model.usdz") if name in files)
    return {
        "scene": scene,
        "preset": preset,
        "total_s": round(total, 1),
        "export_s": round(report["seconds"]["export"], 2),
        "extra_s": round(extra, 2),
        "added_pct": round(100 * extra / max(total - extra, 1e-9), 1),
        "scale": report["scale"]["source"],
        "files": files,
    }


def table(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        "## What the app receives: model files",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine} with `python -m bench.deliverables`. Seconds of a file: making and",
        "checking it (the mobile GLB includes simplification and baking its texture). *Added*: mobile level plus USDZ over the",
        "rest of the job (target ≤ 15 % on balanced).",
        "",
        "| scene | preset | job s | export s | added | scale | file | bytes | triangles | texture | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['scene']} | {row['preset']} | failed: {row['error']} | | | | | | | | |")
            continue
        for i, name in enumerate(n for n in FILES if n in row["files"]):
            f = row["files"][name]
            head = f"| {row['scene']} | {row['preset']} | {row['total_s']} | {row['export_s']} | {row['added_pct']} % ({row['extra_s']} s) | {row['scale']} |" if i == 0 else "| | | | | | |"
            lines.append(f"{head} `{name}` | {f['bytes']:,} | {f['faces']:,} | {f['texture_size']}² | {f['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=["tabletop_small", "portrait_gps"])
    parser.add_argument("--presets", nargs="+", default=["balanced"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"
    with tempfile.TemporaryDirectory(prefix="bench-deliverables-") as work:
        rows = [run(scene, preset, Path(work)) for scene in args.scenes for preset in args.presets]
    for row in rows:
        print(json.dumps(row))
    replace_section(args.out, SECTION, table(rows, machine))
    print(f"wrote section {SECTION} of {args.out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
