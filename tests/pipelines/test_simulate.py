"""The simulate pipeline on its own (the service's contract double): same outputs, progress and errors as the real one, and its scenarios."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from pipelines.errors import Cancelled, InvalidInput, ReconstructionFailed
from pipelines.options import build_options
from pipelines.progress import CancelToken, ProgressEvent
from pipelines.run import STAGE_NAMES
from pipelines.simulate import SimulateScenario, reconstruct
from recon_service.kit import write_jpegs

FAST = SimulateScenario(stage_seconds=0.01)


def test_writes_a_textured_glb_a_colmap_model_points_and_a_simulated_report(tmp_path: Path) -> None:
    import pycolmap
    import trimesh

    events: list[ProgressEvent] = []
    result = reconstruct(write_jpegs(tmp_path / "photos", 5), tmp_path / "out", build_options("preview"), events.append, scenario=FAST)
    assert set(result.artifacts) == {"model.glb", "model_mobile.glb", "model.usdz", "sparse", "points.ply", "preview.png", "report.json"}
    assert all(path.exists() for path in result.artifacts.values())
    (mesh,) = trimesh.load(result.model_path).geometry.values()
    assert mesh.visual.kind == "texture" and mesh.bounds[0][1] == pytest.approx(0.0) and mesh.bounds[1][1] == pytest.approx(1.0)
    model = pycolmap.Reconstruction(str(result.artifacts["sparse"]))
    assert model.num_images() == 5 and model.num_cameras() == 1
    assert len(trimesh.load(result.artifacts["points.ply"]).vertices) == 2000
    report = json.loads(result.report_path.read_text())
    assert report["simulated"] is True and report["options"]["preset"] == "preview" and report == result.report
    assert [e.stage for e in events if e.stage_fraction == 0.0] == list(STAGE_NAMES)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert {e.phase for e in events} == {"processing", "meshing", "texturing"}
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_the_mobile_glb_and_usdz_are_small_but_valid(tmp_path: Path) -> None:
    """The backend's CI gets the real file set: a mobile GLB with a smaller texture, a USDZ that OpenUSD and ARKit accept."""
    import trimesh

    from tests.deliverables import gltf_problems, gltf_validator_missing, usdz_problems

    result = reconstruct(write_jpegs(tmp_path / "photos", 3), tmp_path / "out", build_options(), scenario=FAST)
    full, mobile = (trimesh.load(result.artifacts[n], force="mesh") for n in ("model.glb", "model_mobile.glb"))
    assert max(mobile.visual.material.baseColorTexture.size) < max(full.visual.material.baseColorTexture.size)
    assert usdz_problems(result.artifacts["model.usdz"]) == []
    if gltf_validator_missing() is None:
        assert gltf_problems([result.artifacts["model.glb"], result.artifacts["model_mobile.glb"]]) == {}
    without = reconstruct(write_jpegs(tmp_path / "photos2", 3), tmp_path / "out2", build_options(overrides={"export.usdz": False}), scenario=FAST)
    assert "model.usdz" not in without.artifacts and not (tmp_path / "out2" / "model.usdz").exists()


def test_a_default_job_takes_about_a_second(tmp_path: Path) -> None:
    started = time.monotonic()
    reconstruct(write_jpegs(tmp_path / "photos", 3), tmp_path / "out", build_options())
    assert 1.0 <= time.monotonic() - started < 5.0


def test_fail_at_raises_reconstruction_failed_at_that_stage(tmp_path: Path) -> None:
    scenario = SimulateScenario(stage_seconds=0.01, fail_at="sparse", message="too few matches")
    with pytest.raises(ReconstructionFailed) as info:
        reconstruct(write_jpegs(tmp_path / "photos", 3), tmp_path / "out", build_options(), scenario=scenario)
    assert (info.value.stage, info.value.message) == ("sparse", "too few matches")
    assert not (tmp_path / "out" / "model.glb").exists()


def test_stall_waits_until_cancelled_and_stops_within_a_second(tmp_path: Path) -> None:
    cancel = CancelToken()
    stages: list[str] = []
    errors: list[BaseException] = []
    scenario = SimulateScenario(stage_seconds=0.01, stall=True, stall_at="mesh")

    def run() -> None:
        try:
            reconstruct(write_jpegs(tmp_path / "photos", 3), tmp_path / "out", build_options(), lambda e: stages.append(e.stage), cancel, scenario)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while "mesh" not in stages and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert thread.is_alive() and stages[-1] == "mesh"  # stalled, not finished
    cancelled_at = time.monotonic()
    cancel.cancel()
    thread.join(timeout=5)
    assert time.monotonic() - cancelled_at < 1.0 and len(errors) == 1 and isinstance(errors[0], Cancelled)


def test_too_few_or_unreadable_photos_are_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="at least 3"):
        reconstruct(write_jpegs(tmp_path / "two", 2), tmp_path / "out", build_options(), scenario=FAST)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"photo_{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InvalidInput, match="could be read"):
        reconstruct(broken, tmp_path / "out2", build_options(), scenario=FAST)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"fail_at": "nowhere"}, "simulate.fail_at"),
        ({"stall_at": 3}, "simulate.stall_at"),
        ({"stage_seconds": "slow"}, "simulate.stage_seconds"),
        ({"stage_seconds": 601}, "simulate.stage_seconds"),
        ({"callback_delay_s": True}, "simulate.callback_delay_s"),
        ({"stall": "yes"}, "simulate.stall"),
        ({"duplicate_callbacks": 1}, "simulate.duplicate_callbacks"),
        ({"message": ""}, "simulate.message"),
        ({"crash": True}, "simulate.crash"),
    ],
)
def test_invalid_scenarios_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidInput, match=key):
        SimulateScenario.from_dict(raw)


def test_a_valid_scenario_round_trips() -> None:
    raw = {"fail_at": "dense", "message": "m", "stage_seconds": 1, "stall": False, "stall_at": "mesh",
           "duplicate_callbacks": True, "callback_delay_s": 0.5, "texture_fallback": True}  # fmt: skip
    scenario = SimulateScenario.from_dict(raw)
    assert scenario.to_dict() == {**raw, "stage_seconds": 1.0} and SimulateScenario.from_dict(None) == SimulateScenario()
