"""The testing kit as a backend uses it: the pytest plugin's fixtures, the recorder's failure modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from recon_service.kit import CallbackRecorder, ReconDouble

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "backend_ci_example"
SUCCESS = ["queued", "processing", "meshing", "texturing", "completed"]


def test_a_backend_test_needs_only_the_two_fixtures(recon_double, callback_recorder):
    # The README snippet, verbatim: no imports, no conftest.
    photos = recon_double.make_photos(5)
    job_id = str(uuid.uuid4())
    recon_double.client.submit(job_id, "chair", 5, photos)

    calls = callback_recorder.wait_for(job_id, "completed", timeout=30)
    assert [c.status for c in calls] == ["queued", "processing", "meshing", "texturing", "completed"]
    assert recon_double.client.status(job_id).model_uri == calls[-1].body["model_uri"]


def test_the_double_is_the_real_service_in_simulate_mode_on_loopback(recon_double: ReconDouble) -> None:
    assert recon_double.url.startswith("http://127.0.0.1:") and recon_double.running
    assert httpx.get(recon_double.url + "/healthz", timeout=5).json()["simulated"] is True
    assert httpx.get(recon_double.url + "/jobs", timeout=5).status_code == 401  # the generated token is required
    photos = recon_double.make_photos(3, "named")
    assert photos == recon_double.photos_root / "named" and len(list(photos.glob("*.jpg"))) == 3
    from PIL import Image

    with Image.open(photos / "photo_1.jpg") as image:
        assert image.format == "JPEG" and image.size == (320, 240)


def test_failing_callbacks_are_retried_by_the_double_and_still_arrive_in_order(recon_double, callback_recorder):
    job_id = str(uuid.uuid4())
    callback_recorder.fail_next(2, 503, job_id=job_id)
    callback_recorder.fail_next(1, 500, job_id=str(uuid.uuid4()))  # another job's rule is left alone
    recon_double.submit(3, job_id=job_id, simulate={"stage_seconds": 0.01})

    assert [c.status for c in callback_recorder.wait_for(job_id, "completed")] == SUCCESS
    answers = [(c.answered, c.status) for c in callback_recorder.calls_for(job_id, delivered_only=False)]
    assert answers[:3] == [(503, "queued"), (503, "queued"), (200, "queued")]
    assert all(c.problem is None for c in callback_recorder.calls_for(job_id))


def test_a_slow_backend_delays_later_callbacks_but_not_their_order(recon_double, callback_recorder):
    job_id = str(uuid.uuid4())
    callback_recorder.delay_next(1, 0.5, job_id=job_id)
    recon_double.submit(3, job_id=job_id, simulate={"stage_seconds": 0.01})

    calls = callback_recorder.wait_for(job_id, "completed")
    assert [c.status for c in calls] == SUCCESS
    assert calls[1].received_at - calls[0].received_at >= 0.5  # the next one waited for the slow answer


def test_the_recorder_answers_like_a_strict_backend() -> None:
    with CallbackRecorder(token="cb-token") as recorder:
        good = {"job_id": str(uuid.uuid4()), "status": "processing", "progress": 0.2, "message": None, "model_uri": None}
        auth = {"Authorization": "Bearer cb-token"}
        post = httpx.Client(base_url=recorder.url, timeout=5)
        assert post.post("/internal/reconstruction/status", json=good, headers=auth).status_code == 200
        assert post.post("/internal/reconstruction/progress", json=good, headers={"Authorization": "Bearer x"}).status_code == 401
        assert post.post("/internal/reconstruction/status", json={**good, "progress": 2}, headers=auth).status_code == 400
        assert post.post("/internal/reconstruction/elsewhere", json=good, headers=auth).status_code == 404
        recorder.fail_next(1, 429)
        assert post.post("/internal/reconstruction/status", json=good, headers=auth).status_code == 429
        post.close()

        calls = recorder.calls
        assert [(c.kind, c.answered) for c in calls] == [
            ("status", 200), ("progress", 401), ("status", 400), ("/internal/reconstruction/elsewhere", 404), ("status", 429),
        ]  # fmt: skip
        assert "progress" in (calls[2].problem or "") and calls[0].headers["authorization"] == "Bearer cb-token"
        assert recorder.statuses(good["job_id"]) == ["processing"]
        started = time.monotonic()
        with pytest.raises(AssertionError, match="completed.*last calls received"):
            recorder.wait_for(good["job_id"], "completed", timeout=0.2)
        assert time.monotonic() - started < 2


def test_importing_the_plugin_is_cheap_and_starts_nothing() -> None:
    code = (
        "import sys, threading, recon_service.kit.pytest_plugin;"
        "heavy = [m for m in ('httpx', 'fastapi', 'pydantic', 'PIL', 'numpy', 'pipelines', 'recon_service.api', 'recon_service.jobs') if m in sys.modules];"
        "print(heavy, threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[] 1"


def test_a_backend_project_gets_the_fixtures_from_the_installed_package(tmp_path: Path) -> None:
    """The example backend suite, copied outside this repository, run by a plain ``pytest``."""
    project = shutil.copytree(EXAMPLE, tmp_path / "backend", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(tmp_path / "report.xml")],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = (tmp_path / "report.xml").read_text()
    assert 'tests="3"' in report and 'failures="0"' in report and 'errors="0"' in report
    assert json.dumps("recon_double") not in result.stdout  # no "fixture 'recon_double' not found"


def test_the_s3_double_fixture_plays_the_backends_object_storage_path(recon_double_s3, callback_recorder) -> None:
    """A backend with no shared disk: pre-signed upload through the client, the model fetched from its pre-signed URL."""
    from recon_service.kit import write_jpegs

    photos = sorted(write_jpegs(recon_double_s3.root / "phone", 4).glob("*.jpg"))
    job_id = str(uuid.uuid4())
    recon_double_s3.client.submit_with_upload(job_id, "chair", photos, simulate={"stage_seconds": 0.01})
    calls = callback_recorder.wait_for(job_id, "completed", timeout=30)
    done = calls[-1].body
    assert done["model_uri"] == f"s3://models/out/{job_id}/model.glb"
    assert httpx.get(done["model_url"], timeout=10).content[:4] == b"glTF"
