"""Broken, hostile and unusual photos through the REAL pipeline's ingest stage, inside the real service.

Each job is built to fail at ingest (too few usable photos), so it ends in seconds without running
SfM, and its message lists every photo that was skipped and why. Unusual but valid photos (CMYK,
16-bit, garbage EXIF) must be used, so they must not appear in that list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recon_service.kit import ReconDouble
from tests.helpers import REPO, double
from tests.reliability import hostile
from tests.reliability.conftest import Observe, elapsed_since, is_root, new_job_id

INGEST_FAILURE_S = 60.0
"""A job whose photos are all unusable must fail within this (worker start and imports included, 2 shared cores)."""
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def real_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconDouble]:
    root = tmp_path_factory.mktemp("real-ingest")
    service = double(root / "service", root / "uploads", {"RECON_PIPELINE": "real", "RECON_MAX_PIXELS": str(MAX_PIXELS)})
    service.photos_root.mkdir(parents=True)
    yield service.start()
    service.stop()


def submit(service: ReconDouble, folder: Path, **options: object) -> str:
    count = len([p for p in folder.iterdir() if not p.name.startswith(".")])
    payload = {"job_id": new_job_id(), "dataset_name": "hostile photos", "photo_count": count, "photos_dir": str(folder),
               "options": {"preset": "preview", **options}}  # fmt: skip
    response = service.http.post("/jobs", json=payload)
    assert response.status_code == 202, response.text
    return payload["job_id"]


def test_a_job_of_only_broken_photos_fails_at_ingest_in_seconds_naming_each_file(real_service: ReconDouble, observe: Observe) -> None:
    """0-byte, truncated JPEG, text named .jpg, a 50000x50000 PNG bomb, and a photo over RECON_MAX_PIXELS."""
    folder = real_service.photos_root / "broken"
    folder.mkdir()
    hostile.empty(folder / "empty.jpg")
    hostile.truncated_jpeg(folder / "truncated.jpg")
    hostile.text_named_jpg(folder / "notes.jpg")
    hostile.png_bomb(folder / "bomb.png")
    hostile.noise_image("big", (1800, 1200)).save(folder / "big.jpg", quality=90)
    started = time.monotonic()
    job_id = submit(real_service, folder)
    job = real_service.wait_job(job_id, timeout=INGEST_FAILURE_S)
    took = elapsed_since(started)
    message = job["message"]
    assert job["status"] == "failed" and job["stage"] == "ingest", job
    expected = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "notes.jpg": "not a readable image",
        "bomb.png": "declares 2,500,000,000 pixels",
        "big.jpg": f"1800x1200 is 2,160,000 pixels, more than {MAX_PIXELS:,}",
    }
    for name, reason in expected.items():
        assert f"{name}: " in message and reason in message, (name, reason, message)
    assert job["log_tail"] and any("skipping bomb.png" in line for line in job["log_tail"]), job["log_tail"]
    ready = httpx.get(real_service.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    observe("failed after (s)", took)
    observe("message", message)


def test_unusual_photos_are_used_and_duplicates_are_skipped(real_service: ReconDouble, observe: Observe) -> None:
    """CMYK JPEG, 16-bit PNG, nonsense EXIF, random-bytes EXIF, a photo, its byte copy and a recompressed copy.
    ``ingest.min_photos`` is set one above the usable count so the job stops after ingest and says what it skipped."""
    folder = real_service.photos_root / "unusual"
    folder.mkdir()
    hostile.cmyk_jpeg(folder / "cmyk.jpg")
    hostile.gray16_png(folder / "gray16.png")
    hostile.garbage_exif_jpeg(folder / "exif_garbage.jpg")
    hostile.random_exif_jpeg(folder / "exif_random.jpg")
    hostile.duplicates(folder)
    job = real_service.wait_job(submit(real_service, folder, **{"ingest.min_photos": 6}), timeout=INGEST_FAILURE_S)
    message = job["message"]
    assert job["status"] == "failed" and message.startswith("only 5 usable photos (need at least 6)"), message
    assert "orig_copy.jpg: exact duplicate of orig.jpg" in message and "orig_recompressed.jpg: near duplicate of orig.jpg" in message
    for used in ("cmyk.jpg", "gray16.png", "exif_garbage.jpg", "exif_random.jpg"):
        assert used not in message, f"{used} was skipped: {message}"
    # Pillow's warning about the random EXIF went to the worker's stderr, and from there into the JSON log as a 'native' line.
    native = [line for line in job["log_tail"] or [] if " native: " in line]
    assert any("Corrupt EXIF data" in line for line in native), job["log_tail"]
    observe("message", message)
    observe("stderr of the worker, logged", native)


UNREADABLE_PROBE = """
import json, os, sys
from pathlib import Path
import numpy, PIL.Image, PIL.JpegImagePlugin, pillow_heif  # before dropping privileges: the interpreter lives in /root
from pipelines import ingest
from pipelines.errors import InvalidInput
from pipelines.options import build_options
from pipelines.progress import CancelToken
from tests.helpers import REPO, double
os.setgid(65534); os.setuid(65534)
try:
    result = ingest.run(Path(sys.argv[1]), Path(sys.argv[2]), build_options("preview").ingest, lambda f, m: None, CancelToken())
    print(json.dumps({"used": [p.source for p in result.photos], "skipped": [list(s) for s in result.skipped]}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def test_an_unreadable_photo_is_skipped_naming_it(observe: Observe) -> None:
    """A mode-000 photo among four: root reads anything, so as root ingest runs in a child process as user nobody."""
    base = Path(tempfile.mkdtemp(prefix="recon-unreadable-"))  # not under pytest's tmp dir: that is private to root
    try:
        folder = hostile.valid_photos(base / "in", 4)
        out = base / "out"
        out.mkdir()
        for path in (base, folder, out):
            path.chmod(0o777)
        for photo in folder.iterdir():
            photo.chmod(0o644)
        (folder / "photo_2.jpg").chmod(0o000)
        code = UNREADABLE_PROBE if is_root() else UNREADABLE_PROBE.replace("os.setgid(65534); os.setuid(65534)", "")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", code, str(folder), str(out / "images")], capture_output=True, text=True,
                              timeout=60, env=env, check=True)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    outcome = json.loads(done.stdout)
    observe("ingest outcome", outcome)
    assert outcome.get("used") == ["photo_1.jpg", "photo_3.jpg", "photo_4.jpg"], outcome
    assert [s[0] for s in outcome["skipped"]] == ["photo_2.jpg"]
