"""Object storage end to end, against a real S3 API server on loopback (moto's server mode, a child process).

The service runs as the kit's double (simulate pipeline) with MODEL_OUTPUT_ROOT and
RECON_UPLOAD_ROOT on S3; the backend is played by httpx (PUTs to pre-signed URLs), the kit's
client and a callback recorder.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trimesh

from recon_service.kit import CallbackRecorder, ReconDouble, S3Server, write_jpegs
from tests.helpers import CALLBACK_TOKEN, SUCCESS, delivered, double, wait_statuses, wait_until
from tests.storage.proxy import FaultProxy

FAST = {"stage_seconds": 0.02}
BUCKETS = ("models", "photos", "uploads")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server(BUCKETS) as server:
        yield server


@pytest.fixture(scope="module")
def recorder() -> Iterator[CallbackRecorder]:
    with CallbackRecorder(CALLBACK_TOKEN) as r:
        yield r


def s3_env(s3: S3Server, **extra: str) -> dict[str, str]:
    return s3.env | {"MODEL_OUTPUT_ROOT": "s3://models/out", "RECON_UPLOAD_ROOT": "s3://uploads/in", "RECON_MAX_WORKERS": "2", **extra}


@pytest.fixture(scope="module")
def svc(s3: S3Server, recorder: CallbackRecorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconDouble]:
    root = tmp_path_factory.mktemp("s3svc")
    with double(root / "service", root / "uploads", s3_env(s3, RECON_MAX_PHOTO_BYTES="300000"), recorder) as service:
        yield service


def keys(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def jpeg_bytes(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    folder = write_jpegs(Path(f"/tmp/recon-s3-photos/{seed}"), 1, size=size)
    return (folder / "photo_1.jpg").read_bytes()


def upload_job(svc: ReconDouble, count: int = 3, **fields: Any) -> tuple[str, dict[str, Any]]:
    job_id = str(uuid.uuid4())
    body = {"job_id": job_id, "dataset_name": "scan", "photo_count": count, "upload": True, "simulate": FAST, **fields}
    answer = svc.http.post("/jobs", json=body)
    assert answer.status_code == 202, answer.text
    return job_id, answer.json()


def put(url: dict[str, Any], data: bytes) -> None:
    answer = httpx.request(url["method"], url["url"], content=data, headers=url["headers"], timeout=10)
    assert answer.status_code == 200, answer.text


def test_the_pre_signed_upload_flow_delivers_a_model_on_s3_with_download_links(svc: ReconDouble, s3: S3Server, recorder: CallbackRecorder) -> None:
    job_id, accepted = upload_job(svc)
    upload = accepted["upload"]
    assert [u["name"] for u in upload["urls"]] == ["photo_1.jpg", "photo_2.jpg", "photo_3.jpg"]
    assert upload["commit_url"] == f"/jobs/{job_id}/commit" and all(u["method"] == "PUT" for u in upload["urls"])
    waiting = svc.job(job_id)
    assert (waiting["status"], waiting["stage"], waiting["message"]) == ("queued", "upload", "waiting for 3 photos")
    for i, url in enumerate(upload["urls"]):
        put(url, jpeg_bytes(i))
    time.sleep(0.5)
    assert svc.job(job_id)["status"] == "queued", "the job ran before its commit"

    committed = svc.http.post(upload["commit_url"])
    assert committed.status_code == 200 and committed.json()["stage"] is None, committed.text
    assert svc.http.post(upload["commit_url"]).status_code == 200  # committing again changes nothing
    job = svc.wait_job(job_id)
    assert job["status"] == "completed", job
    assert job["model_uri"] == f"s3://models/out/{job_id}/model.glb"
    stored = keys(s3, "models", f"out/{job_id}/")
    assert f"out/{job_id}/model.glb" in stored and f"out/{job_id}/report.json" in stored and not [k for k in stored if "/work/" in k]
    assert job["stored_bytes"] > 0 and job["artifacts"]["sparse"].endswith("/")

    model = httpx.get(job["model_url"], timeout=10)  # no credentials: the URL is pre-signed
    assert model.status_code == 200
    mesh = trimesh.load(io.BytesIO(model.content), file_type="glb", force="mesh")
    assert len(mesh.faces) == 12
    assert set(job["artifact_urls"]) >= {"model.glb", "model_mobile.glb", "model.usdz", "report.json", "preview.png", "points.ply", "sparse/cameras.txt"}
    usdz = httpx.get(job["artifact_urls"]["model.usdz"], timeout=10)  # AR Quick Look opens a link by its type
    assert usdz.headers["content-type"] == "model/vnd.usdz+zip" and len(usdz.content) == job["artifact_bytes"]["model.usdz"]
    assert httpx.get(job["artifact_urls"]["report.json"], timeout=10).json()["simulated"] is True
    assert svc.job(job_id)["model_url"] != job["model_url"] or True  # fresh on each GET (same second may sign alike)

    assert wait_statuses(recorder, job_id, "completed") == SUCCESS
    done = delivered(recorder, job_id, "status")[-1]
    assert done["model_uri"] == job["model_uri"] and httpx.get(done["model_url"], timeout=10).status_code == 200
    assert "report.json" in done["artifact_urls"]


def test_a_commit_names_what_is_missing_wrong_or_too_large_and_the_resubmission_gives_fresh_urls(svc: ReconDouble, s3: S3Server) -> None:
    body_fields = {"notes": "idempotent"}
    job_id, accepted = upload_job(svc, **body_fields)
    urls = accepted["upload"]["urls"]
    put(urls[0], jpeg_bytes(10))
    put(urls[1], jpeg_bytes(11))
    missing = svc.http.post(f"/jobs/{job_id}/commit")
    assert missing.status_code == 400 and "photo_3.jpg" in missing.json()["error"] and "1 of 3" in missing.json()["error"], missing.text
    put(urls[2], b"this is not a photo at all")
    wrong = svc.http.post(f"/jobs/{job_id}/commit")
    assert wrong.status_code == 400 and "uploads/in/" in wrong.json()["error"] and "photo_3.jpg is not a JPEG" in wrong.json()["error"], wrong.text
    put(urls[2], jpeg_bytes(12, size=(2000, 1500)) + b"\0" * 300_000)
    large = svc.http.post(f"/jobs/{job_id}/commit")
    assert large.status_code == 400 and "photo_3.jpg" in large.json()["error"] and "more than the limit" in large.json()["error"], large.text

    again = svc.http.post("/jobs", json={"job_id": job_id, "dataset_name": "scan", "photo_count": 3, "upload": True, "simulate": FAST, **body_fields})
    assert again.status_code == 202 and again.json()["upload"]["urls"][2]["name"] == "photo_3.jpg"
    put(again.json()["upload"]["urls"][2], jpeg_bytes(12))
    assert svc.http.post(f"/jobs/{job_id}/commit").status_code == 200
    assert svc.wait_job(job_id)["status"] == "completed"
    after = svc.http.post("/jobs", json={"job_id": job_id, "dataset_name": "scan", "photo_count": 3, "upload": True, "simulate": FAST, **body_fields})
    assert after.status_code == 202 and "upload" not in after.json()  # committed: nothing more to upload
    other = svc.submit(write_jpegs(svc.photos_root / "local", 3), simulate=FAST)
    assert svc.http.post(f"/jobs/{other}/commit").status_code == 409


def test_photos_already_in_a_bucket_are_checked_at_submission_and_reconstructed(svc: ReconDouble, s3: S3Server) -> None:
    client = s3.client()
    for i in range(3):
        client.put_object(Bucket="photos", Key=f"set1/photo_{i + 1}.jpg", Body=jpeg_bytes(20 + i))
    client.put_object(Bucket="photos", Key="set1/notes.txt", Body=b"not a photo name: ignored")
    job_id = svc.submit("s3://photos/set1/", photo_count=3, simulate=FAST)  # type: ignore[arg-type]
    job = svc.wait_job(job_id)
    assert job["status"] == "completed" and job["model_uri"].startswith("s3://models/out/")
    assert not list((svc.data_dir / "scratch" / "photos").glob("*")), "the downloaded photos were not removed"

    def refused(photos_dir: str, count: int = 3) -> str:
        answer = svc.http.post("/jobs", json={"job_id": str(uuid.uuid4()), "dataset_name": "x", "photo_count": count, "photos_dir": photos_dir})
        assert answer.status_code == 400, answer.text
        return answer.json()["error"]

    assert "photo_count" in (e := refused("s3://photos/set1", 4)) and "holds 3" in e
    assert "does not exist" in refused("s3://no-such-bucket/set1/")
    assert "holds no photos" in refused("s3://photos/empty/")
    assert "'..'" in refused("s3://photos/../etc/")
    client.put_object(Bucket="photos", Key="big/photo_1.jpg", Body=b"\xff\xd8\xff" + b"\0" * 400_000)
    assert "s3://photos/big/photo_1.jpg is 400,003 bytes" in refused("s3://photos/big/", 1)


def test_an_upload_never_committed_fails_after_its_ttl_and_its_photos_are_removed(s3: S3Server, tmp_path: Path) -> None:
    with double(tmp_path / "svc", tmp_path / "uploads", s3_env(s3, RECON_UPLOAD_TTL_S="1")) as svc:
        job_id, accepted = upload_job(svc)
        put(accepted["upload"]["urls"][0], jpeg_bytes(30))
        job = svc.wait_job(job_id, timeout=10)
        assert job["status"] == "failed" and "RECON_UPLOAD_TTL_S" in job["message"], job
        wait_until(lambda: keys(s3, "uploads", f"in/{job_id}/") == [], 10, "the uploaded photo to be removed")
        assert svc.http.post(f"/jobs/{job_id}/commit").status_code == 409


def test_the_store_down_while_a_job_writes_its_model_fails_the_job_and_leaves_nothing_under_the_prefix(
    s3: S3Server, tmp_path: Path
) -> None:
    proxy = FaultProxy(s3.url)
    proxy.rules.append(lambda method, path: method == "PUT" and path.split("?")[0].endswith("/model.glb"))
    try:
        env = s3_env(s3, RECON_S3_ENDPOINT_URL=proxy.url, RECON_S3_RETRIES="3")
        with double(tmp_path / "svc", tmp_path / "uploads", env) as svc:
            job_id = svc.submit(write_jpegs(svc.photos_root / "p", 3), simulate=FAST)
            job = svc.wait_job(job_id, timeout=60)
            assert job["status"] == "failed" and job["model_uri"] is None
            assert job["message"].startswith(f"the model could not be stored in s3://models/out/{job_id}/"), job["message"]
            assert len([r for r in proxy.refused if r[1].split("?")[0].endswith("model.glb")]) == 3  # retried, then given up
            assert keys(s3, "models", f"out/{job_id}/") == [], "half-written objects were left under the prefix"
            proxy.rules.clear()
            healed = svc.submit(write_jpegs(svc.photos_root / "q", 3), simulate=FAST)
            assert svc.wait_job(healed)["status"] == "completed"
    finally:
        proxy.close()


def test_bad_credentials_a_missing_bucket_and_an_unreachable_store_are_clear_400s_never_500s(tmp_path: Path) -> None:
    with S3Server(("photos", "models"), check_credentials=True) as strict:
        strict.client().put_object(Bucket="photos", Key="a/photo_1.jpg", Body=jpeg_bytes(40))
        env = strict.env | {"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong", "MODEL_OUTPUT_ROOT": "s3://models/out"}
        with not_ready(double(tmp_path / "wrong", tmp_path / "up1", env)) as svc:
            ready = httpx.get(svc.url + "/readyz", timeout=20)
            assert ready.status_code == 503 and "access denied" in ready.json()["error"], ready.text
            answer = svc.http.post("/jobs", json={"job_id": str(uuid.uuid4()), "dataset_name": "x", "photo_count": 1, "photos_dir": "s3://photos/a/"})
            assert answer.status_code == 400 and "access denied" in answer.json()["error"] and "credentials" in answer.json()["error"], answer.text
    dead = f"http://127.0.0.1:{_closed_port()}"
    env = {"RECON_S3_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_DEFAULT_REGION": "us-east-1",
           "MODEL_OUTPUT_ROOT": "s3://models/out", "RECON_S3_TIMEOUT_S": "1"}  # fmt: skip
    with not_ready(double(tmp_path / "dead", tmp_path / "up2", env)) as svc:
        started = time.monotonic()
        answer = svc.http.post("/jobs", json={"job_id": str(uuid.uuid4()), "dataset_name": "x", "photo_count": 1, "photos_dir": "s3://photos/a/"})
        assert answer.status_code == 400 and "cannot reach the object store" in answer.json()["error"] and "RECON_S3_ENDPOINT_URL" in answer.json()["error"]
        assert time.monotonic() - started < 10, "an unreachable store made the request hang"
        ready = httpx.get(svc.url + "/readyz", timeout=20)
        assert ready.status_code == 503 and "MODEL_OUTPUT_ROOT" in ready.json()["error"]


def test_the_python_client_uploads_commits_and_waits(svc: ReconDouble) -> None:
    job_id = str(uuid.uuid4())
    photos = write_jpegs(svc.root / "client-photos", 3)
    queued = svc.client.submit_with_upload(job_id, "chair", sorted(photos.glob("*.jpg")), simulate=FAST)
    assert queued.status.value in ("queued", "processing", "meshing", "texturing", "completed")
    job = svc.client.wait(job_id, timeout=30)
    assert job.status.value == "completed" and job.model_url is not None


def test_settings_refuse_what_they_cannot_serve(tmp_path: Path) -> None:
    from recon_service.settings import SettingsError, load_settings

    for value, fragment in (("gs://bucket/models", "only a local folder or an s3://"), ("s3://Bad_Bucket/x", "not a valid bucket name"),
                            ("s3://bucket/a/../b", "'..'")):  # fmt: skip
        with pytest.raises(SettingsError, match="MODEL_OUTPUT_ROOT") as info:
            load_settings({"MODEL_OUTPUT_ROOT": value})
        assert fragment in str(info.value)
    assert not (Path.cwd() / "s3:").exists()


@contextlib.contextmanager
def not_ready(svc: ReconDouble) -> Iterator[ReconDouble]:
    """A double that is up but, by design, not ready (its object store is unusable)."""
    svc.start(wait=False)
    try:
        wait_until(lambda: _answers(svc.url + "/healthz"), 60, "the service to answer")
        yield svc
    finally:
        svc.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _closed_port() -> int:
    from recon_service.kit import free_port

    return free_port()


def test_retention_removes_old_jobs_objects_and_uploads_and_a_cancel_removes_an_unrun_upload(s3: S3Server, tmp_path: Path) -> None:
    env = s3_env(s3, RECON_RETENTION_S="1", RECON_RETENTION_MODELS="true")
    with double(tmp_path / "svc", tmp_path / "uploads", env) as svc:
        job_id, accepted = upload_job(svc, dataset_name="../../etc/passwd")  # free text never reaches a key
        for i, url in enumerate(accepted["upload"]["urls"]):
            put(url, jpeg_bytes(50 + i))
        assert svc.http.post(f"/jobs/{job_id}/commit").status_code == 200
        assert svc.wait_job(job_id)["status"] == "completed"
        assert keys(s3, "models", f"out/{job_id}/") and keys(s3, "uploads", f"in/{job_id}/")
        assert all(k.startswith(f"out/{job_id}/") for k in keys(s3, "models") if job_id in k) and not [k for k in keys(s3, "models") if "etc" in k]
        wait_until(lambda: keys(s3, "models", f"out/{job_id}/") == [] and keys(s3, "uploads", f"in/{job_id}/") == [], 20, "retention to remove the objects")
        wait_until(lambda: svc.http.get(f"/jobs/{job_id}").status_code == 404, 20, "the record to go with the model")

        other, accepted = upload_job(svc)
        put(accepted["upload"]["urls"][0], jpeg_bytes(60))
        assert svc.http.post(f"/jobs/{other}/cancel").json()["cancelled"] is True
        assert keys(s3, "uploads", f"in/{other}/") == [], "a cancelled upload job kept its photos"


@pytest.mark.slow
def test_a_real_reconstruction_reads_its_photos_from_a_bucket_and_stores_its_model_in_one(s3: S3Server, tmp_path: Path) -> None:
    from fixtures.scenes import scene_dir

    client = s3.client()
    for photo in sorted((scene_dir("tabletop_small") / "images").glob("*.jpg")):
        client.put_object(Bucket="photos", Key=f"real/{photo.name}", Body=photo.read_bytes())
    with double(tmp_path / "svc", tmp_path / "uploads", s3_env(s3, RECON_PIPELINE="real")) as svc:
        job_id = svc.submit("s3://photos/real", photo_count=12, options={"preset": "preview"})
        job = svc.wait_job(job_id, timeout=300)
        assert job["status"] == "completed", job
        mesh = trimesh.load(io.BytesIO(httpx.get(job["model_url"], timeout=30).content), file_type="glb", force="mesh")
        assert len(mesh.faces) > 1000 and mesh.visual.kind == "texture"
        assert f"out/{job_id}/sparse/cameras.bin" in keys(s3, "models", f"out/{job_id}/")
        assert not list(svc.data_dir.glob("scratch/*/*")), "scratch files were left behind"
