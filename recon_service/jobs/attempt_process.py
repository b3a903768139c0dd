"""``python -m recon_service.jobs.attempt_process``: one attempt on a Celery worker host, in a process group of its own.

Started by the Celery task (:mod:`recon_service.jobs.celery_worker`) with the attempt's
:class:`~recon_service.jobs.runner.JobSpec` as JSON on stdin, the dispatch token in
``RECON_ATTEMPT_TOKEN`` and its parent's pid in ``RECON_ATTEMPT_PARENT``. It dies with that parent,
turns SIGTERM into a clean exit, and reports through Redis; a failure's last log lines travel with
its event, since the job's log file lives on the API host.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipelines.child import PARENT_PID_ENV, die_with_parent
from recon_service import logs
from recon_service.jobs import events
from recon_service.jobs.runner import JobSpec, prepare_worker_process, run_attempt
from recon_service.settings import load_settings


class _TailReporter(events.RedisReporter):
    """Sends the attempt's last log lines with a failure."""

    def __init__(self, log_file: Path, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._log_file = log_file

    def failed(self, message: str, *, cancelled: bool = False, log_tail: list[str] | None = None) -> None:
        lines = (
            self._log_file.read_text(errors="replace").splitlines()[-logs.TAIL_LINES :]
            if self._log_file.exists()
            else []
        )
        super().failed(message, cancelled=cancelled, log_tail=lines)


def main() -> None:
    os.environ.setdefault(PARENT_PID_ENV, os.environ.get("RECON_ATTEMPT_PARENT", ""))
    die_with_parent()
    spec = JobSpec(**json.loads(sys.stdin.read()))
    token = os.environ["RECON_ATTEMPT_TOKEN"]
    settings = load_settings()
    log_dir = settings.scratch_root / "logs"
    terminating, cancel = prepare_worker_process(settings, spec.job_id, log_dir)
    log_file = log_dir / f"{spec.job_id}.log"
    log_file.unlink(missing_ok=True)  # this attempt's lines only
    reporter = _TailReporter(log_file, events.connect(settings.broker_url or ""), spec.job_id, spec.attempt, token)
    try:
        run_attempt(
            spec,
            settings,
            reporter,
            parent_pid=int(os.environ["RECON_ATTEMPT_PARENT"]),
            cancel=cancel,
            terminating=terminating,
        )
    finally:
        log_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
