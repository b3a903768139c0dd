"""Hostile photo folders: escapes from RECON_PHOTOS_ROOT, special files, and folders that change after submission.

Each is refused at submission with a 400 naming the file, or, when it changes after the job was
accepted, fails that job with a message naming the problem; nothing is ever opened that could block.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import httpx
import pytest

from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import wait_statuses, wait_until
from tests.reliability import hostile
from tests.reliability.conftest import SUCCESS, Observe, is_root, new_job_id

Stack = tuple[ReconDouble, CallbackRecorder]
FAST = {"stage_seconds": 0.01}


def photos(service: ReconDouble, count: int = 3) -> Path:
    return hostile.valid_photos(service.photos_root / new_job_id()[:8], count)


def submit(service: ReconDouble, photos_dir: Path | str, photo_count: int = 3, **fields: object) -> httpx.Response:
    payload = {"job_id": new_job_id(), "dataset_name": "scan", "photo_count": photo_count, "photos_dir": str(photos_dir), **fields}
    started = time.monotonic()
    response = service.http.post("/jobs", json=payload)
    assert time.monotonic() - started < 5, "the submission blocked"
    response.extensions["job_id"] = payload["job_id"]
    return response


def assert_400(response: httpx.Response, *fragments: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    return error


def test_dot_dot_segments_are_resolved_before_the_root_check(hostile_stack: Stack, observe: Observe) -> None:
    """``<root>/../..`` and ``<root>/x/../../etc`` leave the root; ``<root>/x/../<job>`` stays inside and is accepted."""
    service, _ = hostile_stack
    root = service.photos_root
    escapes = [assert_400(submit(service, f"{root}/../../etc"), "outside the allowed photos root"),
               assert_400(submit(service, f"{root}/x/../../{root.name}/../etc"), "outside the allowed photos root")]  # fmt: skip
    folder = photos(service)
    inside = submit(service, f"{root}/nothing/../{folder.name}", simulate=FAST)
    assert inside.status_code == 202, inside.text
    assert service.wait_job(inside.extensions["job_id"])["status"] == "completed"
    observe("escapes", escapes)


def test_a_photo_symlinked_anywhere_is_refused_naming_it(hostile_stack: Stack, observe: Observe) -> None:
    """``photo_4.jpg`` → ``/dev/zero`` (outside the root), → a real photo inside the root, and (as root) → a
    ``/dev/null`` node made inside the root: photos are never reached through a link."""
    service, _ = hostile_stack
    folder = photos(service)
    (folder / "photo_4.jpg").symlink_to("/dev/zero")
    errors = [assert_400(submit(service, folder, 4), "photo_4.jpg is a symbolic link")]
    (folder / "photo_4.jpg").unlink()
    (folder / "photo_4.jpg").symlink_to(folder / "photo_1.jpg")
    errors.append(assert_400(submit(service, folder, 4), "photo_4.jpg is a symbolic link"))
    if is_root():
        (folder / "photo_4.jpg").unlink()
        node = service.photos_root / f"null-{new_job_id()[:6]}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
        (folder / "photo_4.jpg").symlink_to(node)
        errors.append(assert_400(submit(service, folder, 4), "photo_4.jpg is a symbolic link"))
    observe("errors", errors)


def test_a_fifo_named_like_a_photo_is_refused_without_being_opened(hostile_stack: Stack, observe: Observe) -> None:
    """A FIFO ``photo_4.jpg`` (opening it would block for ever) and a folder named ``photo_5.jpg``."""
    service, _ = hostile_stack
    folder = photos(service)
    os.mkfifo(folder / "photo_4.jpg")
    fifo = assert_400(submit(service, folder, 4), "photo_4.jpg is a FIFO")
    (folder / "photo_4.jpg").unlink()
    (folder / "photo_5.jpg").mkdir()
    directory = assert_400(submit(service, folder, 4), "photo_5.jpg is a folder")
    observe("errors", [fifo, directory])


def test_paths_the_os_refuses_are_400_not_500(hostile_stack: Stack, observe: Observe) -> None:
    """A NUL byte, a 300-byte name, a symlink loop as photos_dir, a dangling photo symlink and a photo linking to itself."""
    service, _ = hostile_stack
    root = service.photos_root
    loop_a, loop_b = root / f"loop-a-{new_job_id()[:6]}", root / f"loop-b-{new_job_id()[:6]}"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling = photos(service)
    (dangling / "photo_4.jpg").symlink_to(root / "never-uploaded.jpg")
    looping = photos(service)
    (looping / "photo_4.jpg").symlink_to(looping / "photo_4.jpg")
    errors = [
        assert_400(submit(service, f"{root}/x\x00y"), "photos_dir"),
        assert_400(submit(service, root / ("n" * 300)), "photos_dir"),
        assert_400(submit(service, loop_a), "photos_dir"),
        assert_400(submit(service, dangling, 4), "photo_4.jpg is a symbolic link"),
        assert_400(submit(service, looping, 4), "photo_4.jpg is a symbolic link"),
    ]
    observe("errors", errors)


def test_a_folder_that_changes_after_submission_fails_its_job_naming_the_problem(hostile_stack: Stack, observe: Observe) -> None:
    """Four jobs wait behind a stalled one; meanwhile one folder is deleted and one photo each becomes a FIFO,
    a symlink to a file outside the root, and a symlink to /dev/zero. Then the stalled job is cancelled."""
    service, fake = hostile_stack
    staller = submit(service, photos(service), simulate={**FAST, "stall": True, "stall_at": "ingest"}).extensions["job_id"]
    wait_until(lambda: service.job(staller)["stage"] == "ingest", 20, "the stalled job to hold the only worker")
    folders = {case: photos(service) for case in ("removed", "fifo", "outside", "device")}
    jobs = {}
    for case, folder in folders.items():
        response = submit(service, folder, simulate=FAST)
        assert response.status_code == 202, response.text
        jobs[case] = response.extensions["job_id"]
    outside = service.root / "secret.jpg"
    shutil.copyfile(folders["fifo"] / "photo_1.jpg", outside)
    shutil.rmtree(folders["removed"])
    (folders["fifo"] / "photo_2.jpg").unlink()
    os.mkfifo(folders["fifo"] / "photo_2.jpg")
    (folders["outside"] / "photo_2.jpg").unlink()
    (folders["outside"] / "photo_2.jpg").symlink_to(outside)
    (folders["device"] / "photo_3.jpg").unlink()
    (folders["device"] / "photo_3.jpg").symlink_to("/dev/zero")
    assert service.http.post(f"/jobs/{staller}/cancel").status_code == 202

    expected = {
        "removed": "no longer exists",
        "fifo": "photo_2.jpg is a FIFO",
        "outside": "photo_2.jpg is a symbolic link",
        "device": "photo_3.jpg is a symbolic link",
    }
    messages = {}
    for case, job_id in jobs.items():
        job = service.wait_job(job_id, timeout=30)
        assert job["status"] == "failed" and expected[case] in job["message"], (case, job["message"])
        assert wait_statuses(fake, job_id, "failed") == ["queued", "processing", "failed"]
        messages[case] = job["message"]
    after = submit(service, photos(service), simulate=FAST).extensions["job_id"]
    assert service.wait_job(after)["status"] == "completed"
    assert wait_statuses(fake, after, "completed") == SUCCESS
    observe("messages", messages)


@pytest.mark.skipif(not is_root(), reason="needs root to make a device node; the symlink-to-/dev/zero case runs everywhere")
def test_device_nodes_and_fifos_never_reach_a_worker(hostile_stack: Stack) -> None:
    """A device node and a FIFO placed directly in the folder (not symlinked) are refused the same way."""
    service, _ = hostile_stack
    folder = photos(service)
    os.mknod(folder / "photo_4.jpg", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's device numbers
    assert_400(submit(service, folder, 4), "photo_4.jpg is a device")
