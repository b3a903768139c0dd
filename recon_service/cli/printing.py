"""What ``recon`` prints: the live progress bar (stderr) and the summary tables (stdout)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from pipelines.progress import ProgressEvent


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressPrinter:
    """Draws progress events on ``stream``: a redrawn bar on a terminal, throttled lines otherwise."""

    def __init__(self, stream: TextIO, tty: bool, interval_s: float = 2.0) -> None:
        self.stream, self.tty, self.interval_s = stream, tty, interval_s
        self._last_stage, self._last_time = "", 0.0
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            pct = 100 * event.fraction
            if self.tty:
                width = shutil.get_terminal_size((100, 20)).columns
                bar_w = 24
                filled = int(round(bar_w * event.fraction))
                line = f"{event.stage:<9} {'█' * filled}{'░' * (bar_w - filled)} {pct:5.1f}%  ETA {_fmt_seconds(event.eta_seconds)}  {event.message}"
                self.stream.write("\r" + line[: width - 1] + "\x1b[K")
                self.stream.flush()
                return
            now = time.monotonic()
            if event.stage != self._last_stage or now - self._last_time >= self.interval_s:
                eta = f", ETA {_fmt_seconds(event.eta_seconds)}" if event.eta_seconds is not None else ""
                self.stream.write(f"[{pct:5.1f}%] {event.stage}: {event.message} ({_fmt_seconds(event.elapsed_seconds)} elapsed{eta})\n")
                self.stream.flush()
                self._last_stage, self._last_time = event.stage, now

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "—" if value is None else fmt.format(value)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def run_summary(report: dict[str, Any], out_dir: Path) -> str:
    """The table ``recon run`` prints, read from ``report.json`` (absent numbers show as —)."""
    rows = [
        ("Photos", f"{_num(_get(report, 'ingest', 'photos_used'))} used, {_num(_get(report, 'ingest', 'photos_skipped'))} skipped"),
        ("Registered", f"{_num(_get(report, 'sparse', 'registered'))} / {_num(_get(report, 'sparse', 'photos'))}"),
        ("Reprojection error", _num(_get(report, "sparse", "mean_reprojection_error_px"), "{:.3f} px")),
        ("Sparse points", _num(_get(report, "sparse", "points3d"))),
        ("Dense points", _num(_get(report, "dense", "num_points"))),
        ("Mesh faces", _num(_get(report, "mesh", "faces"))),
        ("Texture", _num(_get(report, "texture", "texture_size") or _get(report, "texture", "atlas_size"), "{} px")),
    ]
    for stage, seconds in (report.get("seconds") or {}).items():
        rows.append((f"Time {stage}", f"{seconds:.1f} s"))
    rows.append(("Time total", _num(report.get("total_seconds"), "{:.1f} s")))
    rows.append(("Output", str(out_dir / "model.glb")))
    return table(rows)


def eval_summary(result: dict[str, Any]) -> str:
    """The table ``recon eval`` prints: ground-truth scores (``EvalResult.to_dict()``) and/or photometric ones."""
    rows = []
    for key, label in (("photometric", "Rendered vs photos"), ("held_out", "Held-out photos")):
        if key in result:
            p = result[key]
            if p["psnr_db_median"] is None:
                rows.append((label, f"{p['photos']} photos, none with enough coverage to score"))
            else:
                rows.append((label, f"{p['photos']} photos: PSNR {p['psnr_db_median']:.2f} dB, SSIM {p['ssim_median']:.3f}, coverage {p['coverage_median']:.1%} (medians)"))
    if "photos_missing" not in result:
        return table(rows)
    return _gt_summary(result) + ("\n" + table(rows) if rows else "")


def _gt_summary(result: dict[str, Any]) -> str:
    missing = ", ".join(result["photos_missing"]) or "none"
    rows = [("Photos placed", f"{result['photos_registered']} / {result['photos_total']} (missing: {missing})")]
    if not result["aligned"]:
        return table(rows + [("Note", result["mesh_note"])])
    mm = "{:.1f} mm"
    rows += [
        ("Camera position", f"median {mm.format(1000 * result['position_error_median_m'])} ({result['position_error_median_pct']:.2f} %), max {mm.format(1000 * result['position_error_max_m'])} ({result['position_error_max_pct']:.2f} %)"),
        ("Camera rotation", f"median {result['rotation_error_median_deg']:.2f}°, max {result['rotation_error_max_deg']:.2f}°"),
    ]
    for s in result["surface"]:
        rows.append((f"Surface @{100 * s['tau_fraction']:g}% ({mm.format(1000 * s['tau_m'])})", f"precision {s['precision']:.3f}  recall {s['recall']:.3f}  F {s['fscore']:.3f}"))
    if result["accuracy_mean_m"] is not None:
        rows.append(("Accuracy / completeness", f"mean {mm.format(1000 * result['accuracy_mean_m'])} / {mm.format(1000 * result['completeness_mean_m'])}"))
    for name, plane in result.get("planes", {}).items():
        rows.append((f"Plane {name}", f"RMS {mm.format(1000 * plane['rms_m'])} ({plane['rms_pct']:.3f} %), recall @0.5% {plane['recall_05pct']:.3f}"))
    rows.append(("Note", result["mesh_note"]))
    return table(rows)
