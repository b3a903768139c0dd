"""Retention: RECON_RETENTION_S removes finished jobs' working files (and with RECON_RETENTION_MODELS their models); disk use per job."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from recon_service.jobs.records import NewJob
from recon_service.jobs.retention import WORK_DIR, RetentionSweeper, disk_bytes
from recon_service.jobs.store import Store
from recon_service.kit import ReconDouble
from recon_service.settings import Settings
from tests.helpers import wait_until
from tests.reliability import hostile
from tests.reliability.conftest import Observe, log_entries


def fill(folder: Path, megabytes: int) -> Path:
    """Stand-in for the real pipeline's work/ (resized photos, COLMAP database, depth maps): incompressible bytes."""
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    for i in range(megabytes):
        (folder / "depth" / f"view_{i}.npy").write_bytes(os.urandom(1 << 20))
    return folder


def test_retention_removes_finished_jobs_working_files_and_disk_bytes_follows(
    start_service: Callable[..., ReconDouble], observe: Observe
) -> None:
    """RECON_RETENTION_S=2: a completed job's work/ (2 MB) goes about 2 s after it finished; a running job's stays; model.glb stays."""
    import trimesh

    service = start_service(env={"RECON_RETENTION_S": "2", "RECON_MAX_WORKERS": "2"})
    folder = hostile.valid_photos(service.photos_root / "a", 3)
    finished = service.submit(folder, simulate={"stage_seconds": 0.15})
    running = service.submit(hostile.valid_photos(service.photos_root / "b", 3), simulate={"stage_seconds": 0.02, "stall": True})
    wait_until(lambda: service.job(finished)["stage"] == "matching", 20, "the first job to be running")
    wait_until(lambda: service.job(running)["stage"] == "dense", 20, "the second job to stall")
    fill(service.models_root / ".attempts" / f"{finished}.1" / WORK_DIR, 2)  # running jobs write into their attempt's folder
    fill(service.models_root / ".attempts" / f"{running}.1" / WORK_DIR, 1)

    job = service.wait_job(finished)
    before = job["disk_bytes"]
    assert job["status"] == "completed" and before >= 2 << 20, job
    wait_until(lambda: not (service.models_root / finished / WORK_DIR).exists(), 10, "retention to remove the finished job's work/")
    swept_after = time.time() - job_finished_at(service, finished)
    after = service.job(finished)["disk_bytes"]
    assert 0 < after < before - (2 << 20) + (64 << 10), (before, after)
    assert len(trimesh.load(service.models_root / finished / "model.glb", force="scene").geometry) > 0
    assert (service.models_root / ".attempts" / f"{running}.1" / WORK_DIR).exists(), "retention touched a running job"
    assert any(e.get("job_id") == finished and "retention: removed" in e["msg"] for e in log_entries(service))
    assert 2.0 <= swept_after <= 8.0, swept_after
    service.http.post(f"/jobs/{running}/cancel")
    observe("disk_bytes", {"before": before, "after": after})
    observe("work/ removed", f"{swept_after:.1f} s after the job finished (RECON_RETENTION_S=2)")


def job_finished_at(service: ReconDouble, job_id: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(service.job(job_id)["updated_at"]).timestamp()


def test_retention_of_models_removes_whole_folders_of_finished_jobs_only(tmp_path: Path) -> None:
    """RECON_RETENTION_MODELS=true, one sweep: folders of a completed and a failed job go; running, queued,
    unknown and non-job folders stay; nothing goes before its time; without the flag only work/ goes."""
    def settings(models: bool) -> Settings:
        return Settings(service_token="t", data_dir=tmp_path / "data", model_output_root=tmp_path / "models",  # type: ignore[call-arg]
                        photos_root=tmp_path, retention_s=60, retention_models=models)  # fmt: skip

    store = Store(tmp_path / "data" / "jobs.sqlite3", callbacks=False)
    ids = {}
    for name in ("completed", "failed", "running", "queued"):
        ids[name] = str(uuid.uuid4())
        store.create_job(NewJob(ids[name], {}, name, 3, str(tmp_path), None, {"preset": "preview"}, None))
    for name in ("completed", "failed", "running"):
        claimed = store.claim_next()
        assert claimed is not None and claimed.job_id == ids[name]
    store.complete(ids["completed"], 1, model_uri=str(tmp_path / "models" / ids["completed"] / "model.glb"), artifacts={}, message="ok")
    store.fail(ids["failed"], 1, message="no")
    folders = {name: fill(tmp_path / "models" / job_id / WORK_DIR, 1).parent for name, job_id in ids.items()}
    folders["unknown job"] = fill(tmp_path / "models" / str(uuid.uuid4()) / WORK_DIR, 1).parent
    folders["not a job"] = fill(tmp_path / "models" / "lost+found" / WORK_DIR, 1).parent
    import trimesh

    model = trimesh.creation.box().export(file_type="glb")  # a real (tiny) model: every GLB a test leaves is validated
    for folder in folders.values():
        (folder / "model.glb").write_bytes(model)

    assert RetentionSweeper(settings(True), store).sweep(now=time.time() + 30) == [], "removed before RECON_RETENTION_S"
    removed = RetentionSweeper(settings(True), store).sweep(now=time.time() + 61)
    assert sorted(r.job_id for r in removed) == sorted([ids["completed"], ids["failed"]])
    assert all(r.bytes >= 1 << 20 for r in removed)
    gone = {name for name, folder in folders.items() if not folder.exists()}
    assert gone == {"completed", "failed"}, gone

    store.create_job(NewJob(other := str(uuid.uuid4()), {}, "x", 3, str(tmp_path), None, {"preset": "preview"}, None))
    store.claim_next(), store.claim_next()  # the queued job, then this one
    store.complete(other, 1, model_uri="m", artifacts={}, message="ok")
    kept = fill(tmp_path / "models" / other / WORK_DIR, 1).parent
    (kept / "model.glb").write_bytes(model)
    (removal,) = RetentionSweeper(settings(False), store).sweep(now=time.time() + 61)
    assert removal.path == kept / WORK_DIR and (kept / "model.glb").exists() and not (kept / WORK_DIR).exists()
    assert disk_bytes(kept) < 64 << 10


def test_retention_prunes_the_stores_history_and_log_files_of_old_jobs(tmp_path: Path) -> None:
    """Job rows, stage_runs and data/logs no longer grow without bound: old jobs' history goes, recent and running jobs' stays;
    job rows go only with RECON_RETENTION_MODELS=true (the model is gone then too), and never while a callback is pending."""
    def settings(models: bool) -> Settings:
        return Settings(service_token="t", data_dir=tmp_path / "data", model_output_root=tmp_path / "models",  # type: ignore[call-arg]
                        photos_root=tmp_path, retention_s=60, retention_models=models)  # fmt: skip

    store = Store(tmp_path / "data" / "jobs.sqlite3", callbacks=True)
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True)
    ids = {}
    for name in ("old", "pending", "running"):
        ids[name] = str(uuid.uuid4())
        store.create_job(NewJob(ids[name], {}, name, 3, str(tmp_path), None, {"preset": "preview"}, None))
        store.claim_next()
        store.record_progress(ids[name], 1, stage="ingest", phase="processing", progress=0.1, eta_seconds=None, message="m")
        (logs / f"{ids[name]}.log").write_text("{}\n")
    for name in ("old", "pending"):
        store.complete(ids[name], 1, model_uri="file:///m", artifacts={}, message="ok")
    for cb in store.callbacks_of(ids["old"]):
        store.callback_finished(cb.id, delivered=True)
    stray = logs / f"{uuid.uuid4()}.log"  # a log whose job the store no longer holds
    stray.write_text("{}\n")

    RetentionSweeper(settings(False), store).sweep(now=time.time() + 61)
    assert store.get(ids["old"]) is not None and store.stage_runs_of(ids["old"]) == [] and store.callbacks_of(ids["old"]) == []
    assert store.stage_runs_of(ids["running"]) and store.callbacks_of(ids["pending"])  # running / undelivered: kept
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{ids[n]}.log" for n in ("running",))

    RetentionSweeper(settings(True), store).sweep(now=time.time() + 61)
    assert store.get(ids["old"]) is None, "with RECON_RETENTION_MODELS the record goes with the model"
    assert store.get(ids["pending"]) is not None, "a job whose callbacks are still pending keeps its record"
    assert store.get(ids["running"]) is not None
