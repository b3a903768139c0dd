"""Attacks on the service's files: job logs written by strangers, photos swapped for links at the last moment.

A job's log is written only by the job's own code paths (explicit context, never a match on a
message's text), and never for an id the store does not hold; photos are opened once, without
following links, and read from the descriptor that was checked.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import wait_statuses
from tests.reliability import hostile
from tests.reliability.conftest import Observe, new_job_id

Stack = tuple[ReconDouble, CallbackRecorder]


def test_requests_that_name_job_ids_write_no_job_log_and_nothing_into_a_real_jobs_tail(hostile_stack: Stack, observe: Observe) -> None:
    """1000 unauthenticated requests (random ids in paths and query strings, and a real job's id in the query),
    plus authenticated ones for unknown ids: no log file appears, and the real job's log_tail holds none of them."""
    service, fake = hostile_stack
    logs_dir = service.data_dir / "logs"
    real = service.submit(hostile.valid_photos(service.photos_root / new_job_id()[:8], 3),
                          simulate={"stage_seconds": 0.01, "fail_at": "export", "message": "tail wanted"})  # fmt: skip
    assert service.wait_job(real)["status"] == "failed"
    wait_statuses(fake, real, "failed")
    before = set(os.listdir(logs_dir))
    marker = f"probe-{uuid.uuid4().hex[:8]}"
    paths = [f"/jobs/{uuid.uuid4()}?job={uuid.uuid4()}&{marker}" for _ in range(400)]
    paths += [f"/anything?job={real}&{marker}" for _ in range(300)]
    paths += [f"/jobs/{real}/cancel?job={uuid.uuid4()}&{marker}" for _ in range(300)]

    def hit(chunk: list[str]) -> list[int]:
        with httpx.Client(base_url=service.url, timeout=10) as client:  # no token
            return [(client.post(p) if "cancel" in p else client.get(p)).status_code for p in chunk]

    with ThreadPoolExecutor(4) as pool:
        answers = [code for codes in pool.map(hit, [paths[i::4] for i in range(4)]) for code in codes]
    assert set(answers) == {401}
    unknown = [f"/jobs/{uuid.uuid4()}?job={uuid.uuid4()}&{marker}" for _ in range(50)]
    assert {service.http.get(p).status_code for p in unknown} == {404}

    after = set(os.listdir(logs_dir))
    assert after == before, f"log files created for ids nobody submitted: {sorted(after - before)[:5]}"
    tail = service.job(real)["log_tail"]
    assert tail and "tail wanted" in "\n".join(tail)
    assert not [line for line in tail if marker in line or "rejected" in line], tail
    assert marker not in (logs_dir / f"{real}.log").read_text()
    observe("requests", {"unauthenticated": len(paths), "unknown ids with the token": len(unknown), "new log files": 0})
    observe("real job's tail", f"{len(tail)} lines, none from the probes")
