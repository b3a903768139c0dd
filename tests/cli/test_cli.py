"""The ``recon`` command line, run as a real subprocess (exit codes, messages, outputs)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.options import option_keys, options_schema
from pipelines.progress import ProgressEvent
from recon_service.cli import ProgressPrinter, run_summary
from tests.fixtures.fake_runs import fake_run, random_similarity

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "fixtures" / "scenes" / "tabletop_small" / "images"


def recon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recon_service.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_fixtures_list_names_every_scene_and_where_it_lives() -> None:
    res = recon("fixtures", "list")
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert {"tabletop_small", "tabletop", "tabletop_large", "weak_texture", "disjoint", "portrait_exif6"} <= set(lines)
    assert "committed" in lines["tabletop_small"]


def test_fixtures_make_prints_the_committed_folder_and_rejects_unknown_names() -> None:
    res = recon("fixtures", "make", "tabletop_small")
    assert res.returncode == 0 and Path(res.stdout.strip()) == PHOTOS.parent
    res = recon("fixtures", "make", "nope")
    assert res.returncode == 2 and "unknown scene 'nope'" in res.stderr


def test_options_json_is_the_schema_served_at_get_options() -> None:
    res = recon("options", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads(json.dumps(options_schema()))


def test_options_text_and_run_help_cover_every_option_key() -> None:
    text = recon("options").stdout
    help_text = recon("run", "--help").stdout
    for key in option_keys():
        assert f"\n{key} (" in text
        assert f"--{key}" in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "fast"], "option 'preset': must be one of preview, balanced, high, not 'fast'"),
        (["--option", "dense.nope=3"], "option 'dense.nope': unknown option"),
        (["--option", "dense.max_image_size"], "--option expects KEY=VALUE"),
        (["--dense.max_image_size", "5"], "option 'dense.max_image_size': must be at least"),
        (["--sfm.mapper", "magic"], "option 'sfm.mapper': must be one of"),
    ],
)
def test_run_usage_errors_exit_2_with_one_line_naming_the_problem(args: list[str], message: str, tmp_path: Path) -> None:
    res = recon("run", str(PHOTOS), "--out", str(tmp_path / "out"), *args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_run_on_a_missing_folder_exits_2_and_argparse_errors_too(tmp_path: Path) -> None:
    res = recon("run", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = recon("run", str(PHOTOS))  # no --out
    assert res.returncode == 2 and "--out" in res.stderr


def test_eval_scores_a_run_folder_and_writes_eval_json(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "out", PHOTOS.parent, random_similarity(5), drop_images=("photo_004.jpg",))
    res = recon("eval", str(run), "--gt", "tabletop_small")
    assert res.returncode == 0, res.stderr
    assert "11 / 12 (missing: photo_004.jpg)" in res.stdout
    assert "F 1.000" in res.stdout
    data = json.loads((run / "eval.json").read_text())
    assert data["photos_registered"] == 11 and data["surface"][0]["fscore"] > 0.99
    res = recon("eval", str(run), "--gt", str(PHOTOS.parent), "--json")
    assert json.loads(res.stdout)["photos_missing"] == ["photo_004.jpg"]


def test_eval_usage_errors(tmp_path: Path) -> None:
    res = recon("eval", str(tmp_path / "none"), "--gt", "tabletop_small")
    assert res.returncode == 2 and "does not exist" in res.stderr
    (tmp_path / "run").mkdir()
    res = recon("eval", str(tmp_path / "run"), "--gt", "nope")
    assert res.returncode == 2 and "neither a scene folder nor a scene name" in res.stderr
    res = recon("eval", str(tmp_path / "run"), "--gt", "tabletop_small")
    assert res.returncode == 3 and "no COLMAP model" in res.stderr


def _event(stage: str, fraction: float, elapsed: float = 1.0) -> ProgressEvent:
    return ProgressEvent(stage, "processing", fraction, fraction, f"{stage} at {fraction:.2f}", 30.0, elapsed)


def test_progress_without_a_terminal_prints_a_line_per_stage_change_not_per_event() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, interval_s=60)
    for f in (0.1, 0.11, 0.12):
        printer(_event("features", f))
    printer(_event("matching", 0.2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[ 10.0%] features") and "ETA 0:30" in lines[0] and "matching" in lines[1]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer(_event("dense", 0.5))
    printer(_event("dense", 0.75))
    printer.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and " 75.0%" in text


def test_run_summary_reads_report_json_and_marks_missing_numbers() -> None:
    report = {
        "ingest": {"photos_used": 11, "photos_skipped": 1},
        "sparse": {"registered": 10, "photos": 11, "mean_reprojection_error_px": 0.61234, "points3d": 4321},
        "mesh": {"faces": 50000},
        "seconds": {"ingest": 1.25, "features": 3.5},
        "total_seconds": 4.75,
    }
    table = run_summary(report, Path("/tmp/out"))
    assert "11 used, 1 skipped" in table and "10 / 11" in table and "0.612 px" in table and "50,000" in table
    assert "Dense points" in table and "—" in table.split("Dense points")[1].splitlines()[0]
    assert "Time features" in table and "3.5 s" in table and "/tmp/out/model.glb" in table




def test_run_with_too_few_photos_exits_3(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("photo_000.jpg", "photo_001.jpg"):
        (photos / name).write_bytes((PHOTOS / name).read_bytes())
    res = recon("run", str(photos), "--out", str(tmp_path / "out"), "--preset", "preview")
    assert res.returncode == 3 and "invalid input" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_run_stops_it_cleanly_with_exit_130(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon_service.cli", "run", str(PHOTOS), "--out", str(tmp_path / "out"), "--preset", "preview"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # As in a terminal: a shell's background job (how a CI may run this) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    while not proc.stderr.readline().startswith("["):  # wait for the first progress line
        assert proc.poll() is None, "the run ended before reporting progress"
    time.sleep(0.5)  # well inside the run: pycolmap is imported (its import takes SIGTERM over unless prevented)
    proc.send_signal(sig)
    start = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 10
    assert "cancelled" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.glb").exists()
