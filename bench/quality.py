"""Quality on hard scenes and real photos, before and after → sections of bench/results.md.

Each scene runs twice with the balanced preset: "before" with the options in ``VARIANTS`` (the pipeline
as it was until 2026-12-01) and "after" with today's defaults. Hard fixtures (``bench-quality``) are
scored against their ground truth (camera errors, F-score, the wall's flatness) and without it
(``recon eval --photometric``). Real photos (``bench-real``): the sets prepared under ``.cache/real/``
by ``python -m bench.real_photos prepare`` are scored without ground truth: the photos the run was
given (fit) and every 8th photo left out of a second run (held-out; ``--no-held-out`` skips it).

    python -m bench.quality                       # hard fixtures: hard, before and after (~5 min on 2 cores)
    python -m bench.quality --real                # real photo sets (prepare them first; ~25 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.pipeline_bench import _bin, _run_measured, machine_description
from bench.real_photos import REAL_ROOT, SETS
from bench.sections import replace_section
from fixtures.scenes import make_scene

ROOT = Path(__file__).resolve().parent.parent
HOLD_OUT_EVERY = 8
VARIANTS = {"before": ["--option", "sfm.refine_principal_point=false", "--option", "dense.plane_fit_radius=0", "--option", "dense.edge_trim_px=0", "--option", "texture.photo_consistency=false"], "after": []}  # fmt: skip
"""Before: the pipeline as it was until 2026-12-01 (principal point at the image centre, no local plane regression or edge
trimming of depth, no photo-consistency vote in texturing); only unseen faces' colours from their neighbours is in both."""


def _recon_run(images: Path, out: Path, extra: list[str], work: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    code, wall, rss = _run_measured([_bin("recon"), "run", str(images), "--out", str(out), "--preset", "balanced", "--json", *extra], work / f"{out.name}.log")
    row: dict[str, Any] = {"ok": code == 0, "wall_s": round(wall, 1), "peak_rss_mib": round(rss)}
    if code != 0:
        lines = (work / f"{out.name}.log").read_text().strip().splitlines()
        row["error"] = lines[-1] if lines else f"exit {code}"
        return row
    sparse = json.loads((out / "report.json").read_text())["sparse"]
    cams = sparse.get("intrinsics", {}).get("cameras", [])
    row |= {"registered": f"{sparse['registered']}/{sparse['photos']}", "reproj_px": sparse["mean_reprojection_error_px"],
            "pp_refined": all(c["principal_point_refined"] for c in cams) if cams else False}  # fmt: skip
    return row


def _eval(out: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([_bin("recon"), "eval", str(out), *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        return {"eval_error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout)


def _photometric(data: dict[str, Any], key: str) -> dict[str, Any]:
    p = data.get(key) or {}
    return {f"{key}_psnr": p.get("psnr_db_median"), f"{key}_ssim": p.get("ssim_median"), f"{key}_coverage": p.get("coverage_median")}


def held_out_copy(images: Path, dest: Path, every: int = HOLD_OUT_EVERY) -> list[str]:
    """Copy ``images`` to ``dest`` without every ``every``-th photo (by sorted name); returns the names left out."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    names = sorted(p.name for p in images.iterdir() if p.is_file())
    left = [n for i, n in enumerate(names) if i % every == every // 2]
    for n in names:
        if n not in left:
            shutil.copy2(images / n, dest / n)
    return left


def bench_hard(scene: str, work: Path, held_out: bool) -> list[dict[str, Any]]:
    scene_dir = make_scene(scene)
    rows = []
    for variant, extra in VARIANTS.items():
        out = work / f"{scene}-{variant}"
        row = {"scene": scene, "variant": variant} | _recon_run(scene_dir / "images", out, extra, work)
        if row["ok"]:
            data = _eval(out, "--gt", str(scene_dir), "--photometric")
            f05 = next((s["fscore"] for s in data.get("surface", []) if round(s["tau_fraction"], 4) == 0.005), None)
            wall = data.get("planes", {}).get("wall", {})
            row |= {"rot_median_deg": data.get("rotation_error_median_deg"), "centre_median_pct": data.get("position_error_median_pct"),
                    "f_05pct": f05, "wall_rms_pct": wall.get("rms_pct"), "wall_recall": wall.get("recall_05pct")} | _photometric(data, "photometric")  # fmt: skip
            if held_out and variant == "after":
                row |= _held_out(scene_dir / "images", out, work)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _held_out(images: Path, full_out: Path, work: Path, extra: list[str] | None = None) -> dict[str, Any]:
    subset = work / f"{full_out.name}-subset"
    held_out_copy(images, subset)
    out = work / f"{full_out.name}-held-out"
    run = _recon_run(subset, out, extra or [], work)
    if not run["ok"]:
        return {"held_out_error": run.get("error")}
    return _photometric(_eval(out, "--held-out-from", str(full_out)), "held_out")


def bench_real(name: str, work: Path, held_out: bool) -> list[dict[str, Any]]:
    """Both variants on one prepared set, each with its own held-out run (the real sets' only out-of-sample score)."""
    images = REAL_ROOT / name / "images"
    if not images.is_dir():
        return [{"scene": name, "variant": v, "ok": False, "error": f"not prepared: python -m bench.real_photos prepare {name}"} for v in VARIANTS]
    rows = []
    for variant, extra in VARIANTS.items():
        out = work / f"real-{name}-{variant}"
        row = {"scene": name, "variant": variant, "photos": len(list(images.iterdir()))} | _recon_run(images, out, extra, work)
        if row["ok"]:
            row |= _photometric(_eval(out, "--photometric"), "photometric")
            if held_out:
                row |= _held_out(images, out, work, extra)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _variant_text(variant: str) -> str:
    """A variant's options as one would type them after ``--option``."""
    return " ".join(VARIANTS[variant][1::2])


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return ""
    return format(value, spec) if spec and isinstance(value, int | float) else str(value)


def hard_table(rows: list[dict[str, Any]], machine: str) -> str:
    lines = ["## Hard fixtures: before and after", "",
             f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine} with `python -m bench.quality` (balanced preset). "
             f"*Before*: `{_variant_text('before')}` (the pipeline until 2026-12-01 but for the atlas — smoothed labels, absorbed small charts, fold cutting, packing — and the colour of unseen faces, which have no switch); *after*: today's defaults. "
             "Rotation and centre errors after a similarity fitted to the camera centres; F at τ = 0.5 % of the crop diagonal; "
             "wall: RMS distance to the true plane (% of the diagonal) and the fraction of the wall reconstructed within 0.5 %; "
             "PSNR/SSIM/coverage: the textured model rendered from the registered cameras (fit) and, for held-out, from every 8th photo "
             "left out of a second run (medians).", "",
             "| scene | variant | registered | reproj px | rot median ° | centre median % | F@0.5% | wall RMS % | wall recall | PSNR dB | SSIM | coverage | held-out PSNR | held-out SSIM | time s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['scene']} | {r['variant']} | failed: {r.get('error', '')} |" + " |" * 13)
            continue
        lines.append(
            f"| {r['scene']} | {r['variant']} | {r['registered']} | {_fmt(r['reproj_px'], '.3f')} | {_fmt(r.get('rot_median_deg'), '.3f')} | "
            f"{_fmt(r.get('centre_median_pct'), '.3f')} | {_fmt(r.get('f_05pct'), '.3f')} | {_fmt(r.get('wall_rms_pct'), '.3f')} | {_fmt(r.get('wall_recall'), '.3f')} | "
            f"{_fmt(r.get('photometric_psnr'), '.2f')} | {_fmt(r.get('photometric_ssim'), '.3f')} | {_fmt(r.get('photometric_coverage'), '.3f')} | "
            f"{_fmt(r.get('held_out_psnr'), '.2f')} | {_fmt(r.get('held_out_ssim'), '.3f')} | {r['wall_s']} | {r['peak_rss_mib']} |"
        )
    return "\n".join(lines)


def real_table(rows: list[dict[str, Any]], machine: str) -> str:
    lines = ["## Real photos", "",
             f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine} with `python -m bench.quality --real` (balanced preset) on the sets "
             "`python -m bench.real_photos prepare` puts under `.cache/real/` (never committed). No ground truth: reprojection error, "
             "and the textured model rendered from the registered cameras (fit) and from every 8th photo left out of a second run (held-out). "
             f"*Before*: `{_variant_text('before')}`; *after*: today's defaults; both variants run their own held-out run.", "",
             "| set | variant | photos | registered | principal point refined | reproj px | PSNR dB | SSIM | coverage | held-out PSNR | held-out SSIM | held-out coverage | time s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['scene']} | {r['variant']} | {r.get('photos', '')} | failed: {r.get('error', '')} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['scene']} | {r['variant']} | {r['photos']} | {r['registered']} | {'yes' if r['pp_refined'] else 'no'} | {_fmt(r['reproj_px'], '.3f')} | "
            f"{_fmt(r.get('photometric_psnr'), '.2f')} | {_fmt(r.get('photometric_ssim'), '.3f')} | {_fmt(r.get('photometric_coverage'), '.3f')} | "
            f"{_fmt(r.get('held_out_psnr'), '.2f')} | {_fmt(r.get('held_out_ssim'), '.3f')} | {_fmt(r.get('held_out_coverage'), '.3f')} | {r['wall_s']} | {r['peak_rss_mib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="run the real photo sets instead of the hard fixtures")
    parser.add_argument("--scenes", nargs="+", help="hard fixture scenes (default: hard) or real sets (default: all prepared)")
    parser.add_argument("--no-held-out", action="store_true", help="skip the held-out runs (halves the time)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recon-quality-"))
    machine = machine_description()
    if args.real:
        rows = [r for n in (args.scenes or list(SETS)) for r in bench_real(n, work, not args.no_held_out)]
        replace_section(args.out, "bench-real", real_table(rows, machine))
    else:
        rows = [r for s in (args.scenes or ["hard"]) for r in bench_hard(s, work, not args.no_held_out)]
        replace_section(args.out, "bench-quality", hard_table(rows, machine))
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out} (work files in {work})")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
