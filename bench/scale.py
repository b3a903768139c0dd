"""Scale-out benchmark (``make bench-scale``): Celery workers through Redis, on this machine.

* throughput of 20 simulate jobs and of 4 real ``preview`` jobs (tabletop_small, 12 × 640×480)
  with 1, 2 and 4 workers (one job at a time each), and the scaling efficiency
  ``throughput(N) / (N × throughput(1))``;
* the queueing delay (submission → ``processing``) of a short job submitted behind four long
  ones on two busy workers: in the default queue (FIFO, as every job was before the preview
  queue), in the preview queue served by both workers, and with one worker serving only ``preview``.

Every part is a real process (redis-server, the API node, ``recon-worker`` hosts), as in
``tests/distributed``; all of them share this machine's cores, which bounds what scaling can show
here. Writes its section of ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.pipeline_bench import machine_description
from bench.sections import replace_section
from recon_service.kit import write_jpegs
from tests.distributed.cluster import Cluster
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
LONG = {"stage_seconds": 0.6}  # about 6 s a job
SHORT = {"stage_seconds": 0.02}


@dataclass
class Throughput:
    kind: str
    workers: int
    jobs: int
    seconds: float
    completed: int

    @property
    def per_minute(self) -> float:
        return 60.0 * self.completed / self.seconds


def online(cluster: Cluster, count: int) -> None:
    wait_until(lambda: len(cluster.api.http.get("/workers").json()["workers"]) >= count, 60, f"{count} workers online", interval=0.2)


def real_photos(cluster: Cluster, name: str) -> Path:
    from fixtures.scenes import scene_dir

    folder = cluster.api.photos_root / name
    folder.mkdir(parents=True)
    for photo in sorted((scene_dir("tabletop_small") / "images").glob("*.jpg")):
        shutil.copyfile(photo, folder / photo.name)
    return folder


def throughput(work: Path, kind: str, workers: int, jobs: int) -> Throughput:
    env = {"RECON_PIPELINE": "real"} if kind == "real" else {}
    cluster = Cluster.start(work / f"{kind}-{workers}", None, workers=workers, env=env)
    try:
        online(cluster, workers)
        if kind == "real":
            folders = [real_photos(cluster, f"real{i}") for i in range(jobs)]
        else:
            folders = [write_jpegs(cluster.api.photos_root / f"sim{i}", 3) for i in range(jobs)]
        started = time.monotonic()
        ids = [
            cluster.api.submit(f, options={"preset": "preview"}) if kind == "real" else cluster.api.submit(f)
            for f in folders
        ]
        finished = [cluster.api.wait_job(j, timeout=1800) for j in ids]
        seconds = time.monotonic() - started
        return Throughput(kind, workers, jobs, seconds, sum(j["status"] == "completed" for j in finished))
    finally:
        cluster.stop()


def queueing_delay(work: Path, setup: str) -> tuple[float, float]:
    """(delay of the short job s, time until all five finished s) for ``setup``: fifo, shared or dedicated."""
    cluster = Cluster.start(work / f"delay-{setup}", None, workers=0)
    try:
        cluster.add_worker("a", queues="preview,default" if setup != "dedicated" else "default")
        cluster.add_worker("b", queues="preview" if setup == "dedicated" else "preview,default")
        online(cluster, 2)
        started = time.monotonic()
        long = [cluster.api.submit(write_jpegs(cluster.api.photos_root / f"long{i}", 3), simulate=LONG) for i in range(4)]
        wait_until(lambda: any(cluster.api.job(j)["status"] != "queued" for j in long), 30, "a long job to start")
        time.sleep(1.0)  # both shared workers busy
        preset = "balanced" if setup == "fifo" else "preview"
        submitted = time.monotonic()
        short = cluster.api.submit(write_jpegs(cluster.api.photos_root / "short", 3), options={"preset": preset}, simulate=SHORT)
        wait_until(lambda: cluster.api.job(short)["status"] != "queued", 120, "the short job to start", interval=0.05)
        delay = time.monotonic() - submitted
        for job_id in [*long, short]:
            cluster.api.wait_job(job_id, timeout=120)
        return delay, time.monotonic() - started
    finally:
        cluster.stop()


def baseline(work: Path) -> float:
    """Seconds of one real preview job of the same photos run by ``recon run``, without service or broker."""
    from fixtures.scenes import scene_dir

    started = time.monotonic()
    subprocess.run([str(Path(sys.executable).with_name("recon")), "run", str(scene_dir("tabletop_small") / "images"),
                    "--out", str(work / "alone"), "--preset", "preview"], check=True, capture_output=True)  # fmt: skip
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--simulate-jobs", type=int, default=20)
    parser.add_argument("--real-jobs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recon-scale-"))
    rows: list[Throughput] = []
    for kind, jobs in (("simulate", args.simulate_jobs), ("real", args.real_jobs)):
        for workers in args.workers:
            row = throughput(work, kind, workers, jobs)
            print(f"{kind} x{jobs} on {workers} worker(s): {row.seconds:.1f} s, {row.per_minute:.1f} jobs/min, {row.completed} completed", flush=True)
            rows.append(row)
    alone = baseline(work)
    print(f"one real preview job without the service (recon run): {alone:.1f} s", flush=True)
    delays = {}
    for setup in ("fifo", "shared", "dedicated"):
        delays[setup] = queueing_delay(work, setup)
        print(f"short job behind 4 long ones, {setup}: waited {delays[setup][0]:.2f} s; all done in {delays[setup][1]:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Scale-out: Celery workers through Redis",
        "",
        f"Measured {when} on {machine_description()}. Produced by `make bench-scale` (`python -m bench.scale`):",
        "redis-server, the API node and every `recon-worker` (one job at a time each) are processes on this one",
        f"machine ({os.cpu_count()} cores), so N workers share its cores; on N hosts each would have its own.",
        "",
        "| jobs | workers | wall s | jobs/min | completed | scaling efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = next(r for r in rows if r.kind == row.kind and r.workers == min(args.workers))
        efficiency = row.per_minute / (row.workers / base.workers * base.per_minute)
        label = f"{row.jobs} simulate" if row.kind == "simulate" else f"{row.jobs} real preview (tabletop_small)"
        lines.append(f"| {label} | {row.workers} | {row.seconds:.1f} | {row.per_minute:.1f} | {row.completed}/{row.jobs} | {efficiency:.2f} |")
    lines += [
        "",
        f"One real preview job of the same photos alone, with `recon run` (no service, no broker): {alone:.1f} s; the pipeline",
        "already uses both cores, so more workers on this machine add little. Not measured: workers on separate hosts.",
        "",
        "Queueing delay of a short job (submission → `processing`) submitted behind four long simulate jobs (about 6 s each)",
        "with two workers busy:",
        "",
        "| setup | short job waited s | all five done s |",
        "|---|---|---|",
        f"| one FIFO queue (the short job in `default`) | {delays['fifo'][0]:.2f} | {delays['fifo'][1]:.1f} |",
        f"| `preview` queue, both workers serve both queues | {delays['shared'][0]:.2f} | {delays['shared'][1]:.1f} |",
        f"| `preview` queue, one worker serves only `preview` | {delays['dedicated'][0]:.2f} | {delays['dedicated'][1]:.1f} |",
    ]
    replace_section(args.out, "bench-scale", "\n".join(lines))
    print(f"wrote its section of {args.out}")
    return 0 if all(r.completed == r.jobs for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
