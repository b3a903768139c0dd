"""Whole jobs through the real service: workers, store, artifacts and callbacks to a fake backend.

Also the simulate pipeline's scenarios end to end, and callback delivery against a backend that
fails. One service and one backend serve the module; each test waits for its job's last callback.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from recon_service.kit import CallbackRecorder, ReconDouble, write_jpegs
from tests.helpers import CALLBACK_TOKEN, delivered, double, log_entries, wait_statuses, wait_until

SUCCESS = ["queued", "processing", "meshing", "texturing", "completed"]
FAST = {"stage_seconds": 0.02}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReconDouble, CallbackRecorder]]:
    root = tmp_path_factory.mktemp("lifecycle")
    backend = CallbackRecorder(CALLBACK_TOKEN)
    service = double(root / "service", root / "uploads", recorder=backend).start()
    yield service, backend
    service.stop()
    backend.close()


def photos(service: ReconDouble, count: int = 3) -> Path:
    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], count)


def test_a_job_completes_with_ordered_callbacks_and_a_loadable_textured_glb(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    import trimesh

    service, backend = stack
    job_id = service.submit(photos(service, 4))
    seen: list[tuple[str, float]] = []
    slowest_health = 0.0

    def finished() -> bool:
        nonlocal slowest_health
        job = service.job(job_id)
        seen.append((job["status"], job["progress"]))
        started = time.monotonic()
        assert httpx.get(service.url + "/healthz", timeout=5).status_code == 200
        slowest_health = max(slowest_health, time.monotonic() - started)
        return job["status"] in ("completed", "failed")

    wait_until(finished, 30, "the job to finish", interval=0.02)
    progress = [p for _, p in seen]
    assert progress == sorted(progress), "progress went backwards"
    assert all(p < 1.0 for s, p in seen if s != "completed") and seen[-1] == ("completed", 1.0)
    assert slowest_health < 1.0, "the API stalled while a pipeline ran"

    job = service.job(job_id)
    model = Path(urlparse(job["model_uri"]).path)
    assert job["model_uri"].startswith("file:///") and model == service.models_root.resolve() / job_id / "model.glb"
    assert (job["stage"], job["eta_seconds"], job["cancelled"], job["attempts"]) == ("export", None, False, 1)
    assert "simulated" in job["message"]
    assert set(job["artifacts"]) == set(job["artifact_bytes"]) == {"model.glb", "model_mobile.glb", "model.usdz", "sparse", "points.ply", "preview.png", "report.json"}
    assert job["artifact_bytes"]["model.glb"] == model.stat().st_size and job["artifact_bytes"]["sparse"] > 0
    report = json.loads(Path(urlparse(job["artifacts"]["report.json"]).path).read_text())
    assert report["simulated"] is True and report["photos"]["found"] == 4

    scene = trimesh.load(model)
    (mesh,) = scene.geometry.values()
    assert mesh.visual.kind == "texture" and mesh.visual.material.baseColorTexture is not None
    assert len(mesh.faces) == 12 and not list(model.parent.glob("*.tmp"))

    assert wait_statuses(backend, job_id, "completed") == SUCCESS
    calls = backend.calls_for(job_id, delivered_only=False)
    assert all(c.headers.get("authorization") == f"Bearer {CALLBACK_TOKEN}" for c in calls)
    contract = {"job_id", "status", "progress", "message", "model_uri"}
    assert all(set(c.body) == contract for c in calls if c.body["status"] != "completed")
    (done,) = [c.body for c in calls if c.body["status"] == "completed"]
    assert set(done) == contract | {"artifacts", "artifact_bytes"}, "the completed callback adds the files and their sizes"
    assert done["artifacts"] == job["artifacts"] and done["artifact_bytes"] == job["artifact_bytes"]
    assert [c.body["progress"] for c in calls] == sorted(c.body["progress"] for c in calls)
    assert delivered(backend, job_id, "progress"), "no progress callback was sent"
    assert delivered(backend, job_id, "status")[-1]["model_uri"] == job["model_uri"]


def test_fail_at_scenario_fails_the_job_at_that_stage_with_the_message(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    job_id = service.submit(photos(service), simulate={**FAST, "fail_at": "mesh", "message": "no surface could be built"})
    job = service.wait_job(job_id)
    assert job["status"] == "failed" and job["message"].startswith("mesh: no surface could be built")
    assert "simulated" in job["message"] and job["model_uri"] is None and job["cancelled"] is False
    assert not (service.models_root / job_id).exists(), "partial output was left behind"
    assert wait_statuses(backend, job_id, "failed") == ["queued", "processing", "meshing", "failed"]
    assert delivered(backend, job_id, "status")[-1]["message"] == job["message"]


def test_duplicate_callbacks_scenario_sends_every_callback_twice(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    job_id = service.submit(photos(service), simulate={**FAST, "duplicate_callbacks": True})
    wait_until(lambda: backend.statuses(job_id).count("completed") == 2, 30, "both completed callbacks")
    assert backend.statuses(job_id) == [s for s in SUCCESS for _ in range(2)]


def test_callback_delay_scenario_holds_back_each_callback(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    submitted = time.monotonic()
    job_id = service.submit(photos(service), simulate={**FAST, "callback_delay_s": 0.4})
    first_at = wait_until(lambda: backend.calls_for(job_id, delivered_only=False) and time.monotonic(), 10, "the first callback")
    assert first_at - submitted >= 0.4
    assert wait_statuses(backend, job_id, "completed") == SUCCESS


def test_stage_seconds_scenario_slows_every_stage(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    job_id = service.submit(photos(service), simulate={"stage_seconds": 0.15})
    job = service.wait_job(job_id)
    wait_statuses(backend, job_id, "completed")
    report = json.loads(Path(urlparse(job["artifacts"]["report.json"]).path).read_text())
    assert len(report["timings_s"]) == 8 and min(report["timings_s"].values()) >= 0.15


def test_callbacks_are_retried_until_a_failing_backend_recovers_and_stay_in_order(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    backend.fail_next(2, 500)
    backend.fail_next(1, 503)
    backend.fail_next(1, 429)
    backend.fail_next(1, 408)
    job_id = service.submit(photos(service), simulate=FAST)
    assert wait_statuses(backend, job_id, "completed") == SUCCESS
    first_answers = [c.answered for c in backend.calls_for(job_id, delivered_only=False)][:6]
    assert first_answers == [500, 500, 503, 429, 408, 200]
    assert {c.body["status"] for c in backend.calls_for(job_id, delivered_only=False)[:6]} == {"queued"}  # the same callback, retried


def test_a_callback_rejected_with_a_4xx_is_not_retried_and_later_ones_still_arrive(stack: tuple[ReconDouble, CallbackRecorder]) -> None:
    service, backend = stack
    backend.fail_next(1, 400)
    job_id = service.submit(photos(service), simulate=FAST)
    assert wait_statuses(backend, job_id, "completed") == SUCCESS[1:]
    queued_calls = [c for c in backend.calls_for(job_id, delivered_only=False) if c.body["status"] == "queued" and c.kind == "status"]
    assert [c.answered for c in queued_calls] == [400]


def test_callbacks_are_given_up_after_their_maximum_age_and_later_ones_still_arrive(
    start_service: Callable[..., ReconDouble], backend: CallbackRecorder
) -> None:
    service = start_service(env={"RECON_CALLBACK_MAX_AGE_S": "1"}, backend=backend)
    backend.fail_next(10**6, 500)
    doomed = service.submit(photos(service), simulate=FAST)
    service.wait_job(doomed)
    wait_until(lambda: "given up after" in service.log(), 10, "the give-up to be logged")
    backend.heal()
    later = service.submit(photos(service), simulate=FAST)
    assert wait_statuses(backend, later, "completed") == SUCCESS
    # The first job's oldest callbacks were abandoned (not retried for ever); whatever of it still
    # arrived is younger than the maximum age, and in order.
    assert "queued" not in backend.statuses(doomed)
    assert backend.statuses(doomed) == [s for s in SUCCESS if s in backend.statuses(doomed)]


def test_given_up_callbacks_are_dead_letters_shown_per_job_and_in_metrics_and_can_be_redelivered(
    start_service: Callable[..., ReconDouble], backend: CallbackRecorder
) -> None:
    service = start_service(env={"RECON_CALLBACK_MAX_AGE_S": "1"}, backend=backend)
    backend.fail_next(10**6, 500)
    job_id = service.submit(photos(service), simulate=FAST)
    service.wait_job(job_id)
    counts = wait_until(lambda: (c := service.job(job_id)["callbacks"]) and c["pending"] == 0 and c["dead"] > 0 and c, 20, "the callbacks to die")
    assert counts["delivered"] == 0
    metrics = service.http.get("/metrics").text
    assert f"recon_callbacks_dead {float(counts['dead'])}" in metrics
    assert service.job(job_id)["log_tail"] is None  # completed: the dead letters are in `callbacks`, not in a failure

    backend.heal()
    answer = service.http.post(f"/jobs/{job_id}/callbacks/redeliver")
    assert answer.status_code == 200 and answer.json()["redelivered"] == counts["dead"], answer.text
    statuses = wait_statuses(backend, job_id, "completed")
    assert statuses == [s for s in SUCCESS if s in statuses] and statuses[-1] == "completed"
    assert wait_until(lambda: service.job(job_id)["callbacks"]["dead"] == 0 and service.job(job_id)["callbacks"], 10, "the outbox to drain")
    assert service.http.post(f"/jobs/{uuid.uuid4()}/callbacks/redeliver").status_code == 404


@pytest.mark.parametrize("status", [401, 403, 404, 409])
def test_a_backend_that_refuses_status_callbacks_for_a_while_still_gets_every_one(
    start_service: Callable[..., ReconDouble], backend: CallbackRecorder, status: int
) -> None:
    """A token being rotated (401/403), a route deployed late (404), a conflict (409): retried slowly, loudly, never lost."""
    service = start_service(backend=backend)
    backend.fail_next(10**6, status)
    job_id = service.submit(photos(service), simulate=FAST)
    assert service.wait_job(job_id)["status"] == "completed"
    wait_until(lambda: len(backend.calls_for(job_id, delivered_only=False)) >= 4, 20, "the refused callback to be retried")
    backend.heal()
    assert collapse_statuses(wait_statuses(backend, job_id, "completed")) == SUCCESS
    loud = [e for e in log_entries(service) if e.get("job_id") == job_id and e["level"] == "ERROR" and f"HTTP {status}" in e["msg"]]
    assert len(loud) == 1 and "RECON_CALLBACK_TOKEN" in loud[0]["msg"], loud
    assert service.job(job_id)["callbacks"]["dead"] == 0


def collapse_statuses(statuses: list[str]) -> list[str]:
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def test_a_job_that_fell_back_to_vertex_colours_says_so_in_its_message_and_completed_callback(
    stack: tuple[ReconDouble, CallbackRecorder],
) -> None:
    service, backend = stack
    job_id = service.submit(photos(service), simulate={**FAST, "texture_fallback": True})
    job = service.wait_job(job_id)
    assert job["status"] == "completed" and job["message"].startswith("completed without texture: texture baking failed"), job["message"]
    wait_statuses(backend, job_id, "completed")
    assert delivered(backend, job_id, "status")[-1]["message"] == job["message"]
