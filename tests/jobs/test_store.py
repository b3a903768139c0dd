"""The job store on a real SQLite file: transitions, monotonic progress, fencing, the outbox."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from recon_service.jobs.records import CancelOutcome, InvalidTransition, JobState, NewJob
from recon_service.jobs.store import Store


def new_job(**overrides: object) -> NewJob:
    job_id = str(uuid.uuid4())
    fields: dict[str, object] = dict(
        job_id=job_id, request={"job_id": job_id}, dataset_name="scan", photo_count=3, photos_dir="/photos",
        notes=None, options={"preset": "balanced"}, simulate=None,
    )  # fmt: skip
    fields.update(overrides)
    return NewJob(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "jobs.sqlite3", callbacks=True, progress_callback_interval_s=0.2)


def progress(store: Store, job_id: str, attempt: int, value: float, phase: str = "processing", stage: str = "dense") -> bool:
    return store.record_progress(job_id, attempt, stage=stage, phase=phase, progress=value, eta_seconds=5.0, message=f"{value}")


def test_claims_are_fifo_and_count_attempts(store: Store) -> None:
    first, _ = store.create_job(new_job())
    second, _ = store.create_job(new_job())
    claimed = store.claim_next()
    assert claimed is not None and claimed.job_id == first.job_id
    assert (claimed.state, claimed.status, claimed.attempts) == (JobState.RUNNING, "processing", 1)
    assert store.claim_next().job_id == second.job_id  # type: ignore[union-attr]
    assert store.claim_next() is None


def test_creating_a_known_job_id_returns_the_stored_job(store: Store) -> None:
    job = new_job()
    created, was_new = store.create_job(job)
    again, was_new_again = store.create_job(job)
    assert was_new and not was_new_again and again.seq == created.seq


def test_progress_never_decreases_and_reaches_one_only_when_completed(store: Store) -> None:
    job, _ = store.create_job(new_job())
    store.claim_next()
    progress(store, job.job_id, 1, 0.5)
    progress(store, job.job_id, 1, 0.3)
    assert store.get(job.job_id).progress == 0.5  # type: ignore[union-attr]
    progress(store, job.job_id, 1, 1.0)
    assert store.get(job.job_id).progress < 1.0  # type: ignore[union-attr]
    store.complete(job.job_id, 1, model_uri="file:///m/model.glb", artifacts={}, message="completed")
    done = store.get(job.job_id)
    assert done is not None and (done.status, done.progress) == ("completed", 1.0)


def test_a_rerun_after_restart_shows_its_own_stage_holds_progress_and_fences_the_old_attempt(store: Store) -> None:
    job, _ = store.create_job(new_job())
    store.claim_next()
    progress(store, job.job_id, 1, 0.7, phase="meshing", stage="mesh")
    assert store.recover(max_attempts=3, give_up_message="gave up") == [job.job_id]
    requeued = store.get(job.job_id)
    assert requeued is not None and (requeued.state, requeued.status, requeued.stage, requeued.progress) == (JobState.QUEUED, "queued", None, 0.7)
    assert "attempt 2 of 3" in requeued.message
    assert [c.body["status"] for c in store.callbacks_of(job.job_id) if c.kind == "status"][-2:] == ["meshing", "queued"]
    rerun = store.claim_next()
    assert rerun is not None and rerun.attempts == 2 and rerun.status == "processing"
    progress(store, job.job_id, 2, 0.1, phase="processing", stage="ingest")  # the re-run starts over...
    current = store.get(job.job_id)
    assert current is not None and (current.status, current.stage, current.progress) == ("processing", "ingest", 0.7)  # ...progress held
    progress(store, job.job_id, 2, 0.8, phase="meshing", stage="mesh")
    assert store.get(job.job_id).progress == 0.8  # type: ignore[union-attr]
    assert not progress(store, job.job_id, 1, 0.9)  # the stale first attempt can no longer write
    assert not store.complete(job.job_id, 1, model_uri="file:///x", artifacts={}, message="stale")


def test_a_job_interrupted_too_often_fails_instead_of_running_again(store: Store) -> None:
    job, _ = store.create_job(new_job())
    for _ in range(3):
        store.claim_next()
        store.recover(max_attempts=3, give_up_message="interrupted too often")
    failed = store.get(job.job_id)
    assert failed is not None and (failed.state, failed.message) == (JobState.FAILED, "interrupted too often")


def test_finished_jobs_cannot_be_reopened(store: Store) -> None:
    job, _ = store.create_job(new_job())
    store.claim_next()
    store.fail(job.job_id, 1, message="boom")
    record = store.get(job.job_id)
    with pytest.raises(InvalidTransition):
        store._save(store._conn(), record, state=JobState.RUNNING)  # type: ignore[arg-type]


def test_cancel_outcomes_follow_the_job_state(store: Store) -> None:
    queued, _ = store.create_job(new_job())
    outcome, record = store.request_cancel(queued.job_id)
    assert outcome is CancelOutcome.CANCELLED and record is not None and record.cancelled and record.message == "cancelled"
    assert store.request_cancel(queued.job_id)[0] is CancelOutcome.ALREADY
    running, _ = store.create_job(new_job())
    store.claim_next()
    assert store.request_cancel(running.job_id)[0] is CancelOutcome.STOPPING
    assert store.cancel_reason(running.job_id) == "user"
    store.complete(running.job_id, 1, model_uri="file:///m", artifacts={}, message="completed")
    assert store.request_cancel(running.job_id)[0] is CancelOutcome.FINISHED
    assert store.request_cancel(str(uuid.uuid4()))[0] is CancelOutcome.NOT_FOUND


def test_outbox_keeps_status_changes_in_order_and_throttles_progress(store: Store) -> None:
    job, _ = store.create_job(new_job())
    store.claim_next()
    for value in (0.1, 0.2, 0.3):  # within one throttle interval: one progress callback at most
        progress(store, job.job_id, 1, value)
    progress(store, job.job_id, 1, 0.6, phase="meshing", stage="mesh")
    time.sleep(0.25)
    progress(store, job.job_id, 1, 0.65, phase="meshing", stage="mesh")
    progress(store, job.job_id, 1, 0.66, phase="meshing", stage="mesh")
    store.complete(job.job_id, 1, model_uri="file:///m/model.glb", artifacts={"model.glb": "file:///m/model.glb"}, message="completed",
                   artifact_bytes={"model.glb": 1234})  # fmt: skip
    calls = [(c.kind, c.body["status"], c.body["progress"]) for c in store.callbacks_of(job.job_id)]
    statuses = [status for kind, status, _ in calls if kind == "status"]
    assert statuses == ["queued", "processing", "meshing", "completed"]
    progresses = [p for kind, _, p in calls if kind == "progress"]
    assert len(progresses) <= 2 and progresses == sorted(progresses)
    assert calls[-1] == ("status", "completed", 1.0)
    assert set(store.callbacks_of(job.job_id)[-1].body) == {"job_id", "status", "progress", "message", "model_uri", "artifacts", "artifact_bytes"}
    assert store.callbacks_of(job.job_id)[-1].body["artifact_bytes"] == {"model.glb": 1234}
    assert all(set(c.body) == {"job_id", "status", "progress", "message", "model_uri"} for c in store.callbacks_of(job.job_id)[:-1])
    assert store.callbacks_of(job.job_id)[-1].body["model_uri"] == "file:///m/model.glb"


def test_no_callbacks_are_queued_without_a_callback_url(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.sqlite3", callbacks=False)
    job, _ = store.create_job(new_job())
    store.claim_next()
    assert store.callbacks_of(job.job_id) == [] and store.pending_callback_count() == 0


def test_pruning_removes_only_settled_callbacks_of_jobs_finished_long_enough_ago(store: Store) -> None:
    old, _ = store.create_job(new_job())
    store.claim_next()
    store.complete(old.job_id, 1, model_uri="file:///m/model.glb", artifacts={}, message="completed")
    time.sleep(0.01)  # let the clock move, so the two jobs' finish times differ
    recent, _ = store.create_job(new_job())
    running, _ = store.create_job(new_job())
    store.claim_next()
    store.claim_next()
    store.complete(recent.job_id, 1, model_uri="file:///m/model.glb", artifacts={}, message="completed")
    old_callbacks = store.callbacks_of(old.job_id)
    assert len(old_callbacks) >= 2
    store.callback_finished(old_callbacks[0].id, delivered=True)
    store.callback_finished(old_callbacks[1].id, delivered=False, error="404 from the backend")
    for cb in store.callbacks_of(recent.job_id) + store.callbacks_of(running.job_id):
        store.callback_finished(cb.id, delivered=True)
    cutoff = store.get(recent.job_id).finished_at  # type: ignore[union-attr]  # old finished before it

    assert store.prune_callbacks(finished_before=cutoff) == 2
    left = store.callbacks_of(old.job_id)
    assert [cb.id for cb in left] == [cb.id for cb in old_callbacks[2:]] and all(cb.state == "pending" for cb in left)
    assert store.callbacks_of(recent.job_id) and store.callbacks_of(running.job_id)
