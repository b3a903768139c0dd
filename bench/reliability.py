"""Reliability report: hostile input, faults, observability and load → bench/reliability.md.

    python -m bench.reliability                 # everything, about 7 minutes on 2 cores (``make reliability``)
    python -m bench.reliability --quick         # 20 s of load, 3 real-mode kills: about 3 minutes
    python -m bench.reliability --skip-real     # no real-pipeline parts (simulate mode and pytest only)

Parts, each bounded in time and run against real service processes on 127.0.0.1 only:

1. ``tests/reliability`` (pytest): hostile paths, images, requests; SIGKILLed service and workers;
   backend outage; full disk; retention; metrics and logs. Plus the property-based fuzz run of the
   OpenAPI document (``tests/api/test_api_fuzz.py``: zero 5xx). Each test's docstring says what was
   tried and its ``record_property`` values what was observed.
2. Service SIGKILL at random moments (simulate mode), restarted each time: every job ends
   completed, callbacks in order, no orphan processes, no half-written models.
3. Worker SIGKILL in each stage of the REAL pipeline (fixture ``tabletop_small``, preview preset).
4. Load: N async clients for T seconds mixing submissions (simulate mode), polls, listings and
   cancels against one service; throughput, latency, errors, every job final with its callbacks.
5. ``GET /jobs/{id}`` latency while a REAL pipeline job runs in a worker (target p99 < 50 ms),
   then retention removing that job's ``work/``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from pipelines.files import write_text_atomic
from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import CALLBACK_TOKEN, TOKEN, double, wait_statuses, wait_until

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "reliability.md"
SCENE = ROOT / "fixtures" / "scenes" / "tabletop_small" / "images"
STAGES = ("ingest", "features", "matching", "sparse", "dense", "mesh", "texture", "export")
PHASE_RANK = {"queued": 0, "processing": 1, "meshing": 2, "texturing": 3, "completed": 4, "failed": 4}
P99_TARGET_MS = 50.0


@dataclass
class Row:
    """One case of the report."""

    part: str
    case: str
    tried: str
    observed: str
    result: str  # PASS, FAIL, XFAIL (known bug, reported), SKIP
    seconds: float


# -- helpers ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def collapse(statuses: list[str]) -> list[str]:
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def callbacks_in_order(statuses: list[str], final: str) -> bool:
    """Status callbacks start with queued, never go back a phase, and end with the job's final status."""
    ranks = [PHASE_RANK[s] for s in statuses]
    return bool(statuses) and statuses[0] == "queued" and statuses[-1] == final and ranks == sorted(ranks)


def worker_pid(service: ReconDouble, job_id: str) -> int:
    def find() -> int | None:
        for line in reversed(service.log().splitlines()):
            if job_id in line and "started in worker pid=" in line:
                return int(json.loads(line)["msg"].rsplit("pid=", 1)[1])
        return None

    return wait_until(find, 60, f"the worker of {job_id}")


def children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def half_written(models: Path) -> list[str]:
    """``*.tmp`` files and ``model.glb`` files that do not load."""
    import trimesh

    bad = [str(p) for p in models.rglob("*.tmp")]
    for glb in models.rglob("model.glb"):
        try:
            trimesh.load(glb, force="scene")
        except Exception as exc:  # any failure to load is what we look for
            bad.append(f"{glb}: {exc}")
    return bad


def copy_scene(service: ReconDouble) -> Path:
    folder = service.photos_root / uuid.uuid4().hex[:8]
    shutil.copytree(SCENE, folder)
    return folder


def simulate_photos(service: ReconDouble, count: int = 3) -> Path:
    from recon_service.kit import write_jpegs

    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], count)


def start(root: Path, backend: CallbackRecorder, **env: str) -> ReconDouble:
    return double(root, root / "uploads", env, backend).start()


# -- part 1: the pytest suite ----------------------------------------------------------------------
def pytest_part(work: Path, timeout_s: float) -> list[Row]:
    report = work / "junit.xml"
    command = [sys.executable, "-m", "pytest", "tests/reliability", "tests/api/test_api_fuzz.py", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               "-o", "junit_family=xunit1"]  # fmt: skip
    try:
        subprocess.run(command, cwd=ROOT, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [Row("tests", "pytest tests/reliability", "the whole suite", f"did not finish within {timeout_s:g} s", "FAIL", timeout_s)]
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        module, name = case.get("classname", ""), case.get("name", "")
        observed = [f"{p.get('name')}: {p.get('value')}" for p in case.iter("property")]
        result = "PASS"
        for tag, outcome in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
            element = case.find(tag)
            if element is not None:
                result = outcome
                message = element.get("message") or ""
                if tag == "skipped" and element.get("type") == "pytest.xfail":
                    result = "XFAIL"
                observed.append(message.splitlines()[0][:300] if message else "")
        rows.append(Row("tests", f"{module.rsplit('.', 1)[-1]}::{name}", _docstring(module, name), "; ".join(o for o in observed if o),
                        result, float(case.get("time", 0))))  # fmt: skip
    return rows


def _docstring(module: str, name: str) -> str:
    try:
        function = getattr(importlib.import_module(module), name.split("[", 1)[0])
    except (ImportError, AttributeError):
        return ""
    doc = " ".join((function.__doc__ or "").split())
    return doc + (f" Case: {name.split('[', 1)[1].rstrip(']')}." if "[" in name else "")


# -- part 2: the service SIGKILLed at random moments ----------------------------------------------
def service_kill_rounds(work: Path, rounds: int, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    backend = CallbackRecorder(CALLBACK_TOKEN)
    service = start(work / "kill-rounds", backend, RECON_MAX_WORKERS="2")
    rows: list[Row] = []
    try:
        for n in range(1, rounds + 1):
            started = time.monotonic()
            jobs = [service.submit(simulate_photos(service), simulate={"stage_seconds": rng.uniform(0.05, 0.3)}) for _ in range(5)]
            time.sleep(rng.uniform(0.3, 2.5))
            before = Counter(service.job(j)["status"] for j in jobs)
            children = children_of(service.pid)
            service.kill()
            orphans = wait_survivors(children, 5.0)
            service.start()
            final = {j: service.wait_job(j, timeout=60) for j in jobs}
            problems = [f"{j[:8]} {job['status']}" for j, job in final.items() if job["status"] != "completed"]
            for j in jobs:
                statuses = collapse(wait_statuses(backend, j, "completed", timeout=30))
                if statuses != ["queued", "processing", "meshing", "texturing", "completed"]:
                    problems.append(f"{j[:8]} callbacks {statuses}")
            problems += half_written(service.models_root) + [f"orphan pid {p}" for p in orphans]
            attempts = Counter(job["attempts"] for job in final.values())
            rows.append(Row("service SIGKILL", f"round {n}", "5 simulate jobs on 2 workers; SIGKILL the server at a random moment; restart",
                            f"at the kill: {dict(before)}; {len(children)} child processes all exited; attempts {dict(attempts)}; "
                            f"{'; '.join(problems) or 'all completed, callbacks complete and in order, no *.tmp'}",
                            "FAIL" if problems else "PASS", time.monotonic() - started))  # fmt: skip
    except Exception as exc:
        rows.append(Row("service SIGKILL", f"round {len(rows) + 1}", "random SIGKILL", f"error: {exc!r}"[:500], "FAIL", 0.0))
    finally:
        service.stop()
        backend.close()
    return rows


def wait_survivors(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


# -- part 3: a worker SIGKILLed in each stage of the real pipeline --------------------------------
def real_worker_kills(service: ReconDouble, backend: CallbackRecorder, stages: tuple[str, ...]) -> list[Row]:
    rows = []
    for stage in stages:
        started = time.monotonic()
        try:
            job_id = service.submit(copy_scene(service), options={"preset": "preview"})
            wait_until(lambda j=job_id, s=stage: _reached(service, j, s), 240, f"stage {stage}", interval=0.01)
            reached = time.monotonic() - started
            os.kill(worker_pid(service, job_id), signal.SIGKILL)
            killed = time.monotonic()
            job = service.wait_job(job_id, timeout=30)
            reap_s = time.monotonic() - killed
            statuses = collapse(wait_statuses(backend, job_id, "failed", timeout=30))
            tail = job.get("log_tail") or []
            checks = {
                "message": job["message"].startswith("worker was killed, probably out of memory"),
                "stage": job["stage"] == stage,
                "output removed": not (service.models_root / job_id).exists(),
                "log tail has the kill": any("exit code -9" in line for line in tail),
                "callbacks in order": callbacks_in_order(statuses, "failed"),
            }
            last_worker = next((line for line in reversed(tail) if "exit code" not in line and "MainProcess" not in line), "")
            rows.append(Row("real worker SIGKILL", stage, f"real job (12 photos, preview); SIGKILL its worker once it reports stage {stage}",
                            f"reached after {reached:.1f} s; failed {reap_s:.2f} s after the kill: {job['message']!r}; "
                            f"callbacks {statuses}; {len(tail)} log lines kept, last of the worker: {last_worker[:160]!r}; "
                            + ", ".join(f"{k}: {'ok' if v else 'NO'}" for k, v in checks.items()),
                            "PASS" if all(checks.values()) else "FAIL", time.monotonic() - started))  # fmt: skip
        except Exception as exc:
            rows.append(Row("real worker SIGKILL", stage, f"SIGKILL in {stage}", f"error: {exc!r}"[:500], "FAIL", time.monotonic() - started))
    return rows


def _reached(service: ReconDouble, job_id: str, stage: str) -> bool:
    job = service.job(job_id)
    if job["status"] in ("completed", "failed"):
        raise AssertionError(f"the job ended ({job['status']}: {job['message']}) before reaching {stage}")
    return job["stage"] == stage


# -- part 4 and 5: latency under load --------------------------------------------------------------
@dataclass
class Load:
    latencies: dict[str, list[float]]
    errors: Counter[str]
    requests: int
    seconds: float
    accepted: list[str]


async def drive(url: str, clients: int, seconds: float, plan: Callable[[random.Random, list[str]], tuple[str, str, str, Any]]) -> Load:
    """``clients`` coroutines issue ``plan(rng, jobs)`` requests back to back for ``seconds``; latency per kind (ms)."""
    load = Load(defaultdict(list), Counter(), 0, seconds, [])
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, limits=limits) as client:

        async def one(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < stop_at:
                kind, method, path, payload = plan(rng, load.accepted)
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, json=payload)
                except httpx.HTTPError as exc:
                    load.errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                load.latencies[kind].append((time.perf_counter() - started) * 1000)
                load.requests += 1
                expected = {"submit": (202,), "cancel": (200, 202, 409)}.get(kind, (200,))
                if response.status_code not in expected:
                    load.errors[f"{kind}: HTTP {response.status_code}"] += 1
                elif kind == "submit":
                    load.accepted.append(payload["job_id"])

        await asyncio.gather(*(one(i) for i in range(clients)))
    return load


def load_part(work: Path, clients: int, seconds: float, submit_per_s: float = 3.0, cancel_per_s: float = 0.5) -> tuple[list[Row], dict[str, Any]]:
    backend = CallbackRecorder(CALLBACK_TOKEN)
    service = start(work / "load", backend, RECON_MAX_WORKERS="4")
    folders = [simulate_photos(service) for _ in range(8)]
    pace = {"submit": time.monotonic(), "cancel": time.monotonic()}

    def plan(rng: random.Random, jobs: list[str]) -> tuple[str, str, str, Any]:
        now = time.monotonic()
        if now >= pace["submit"]:
            pace["submit"] = max(pace["submit"], now - 1) + 1 / submit_per_s
            body = {"job_id": str(uuid.uuid4()), "dataset_name": "load", "photo_count": 3, "photos_dir": str(rng.choice(folders)),
                    "simulate": {"stage_seconds": 0.05}}  # fmt: skip
            return "submit", "POST", "/jobs", body
        if jobs and now >= pace["cancel"]:
            pace["cancel"] = now + 1 / cancel_per_s
            return "cancel", "POST", f"/jobs/{rng.choice(jobs)}/cancel", None
        if not jobs or rng.random() < 0.1:
            return "list", "GET", "/jobs?limit=20", None
        return "get", "GET", f"/jobs/{rng.choice(jobs)}", None

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        load = asyncio.run(drive(service.url, clients, seconds, plan))
        load_during = os.getloadavg()[0]
        final: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 180
        for job_id in load.accepted:
            final[job_id] = service.wait_job(job_id, timeout=max(1.0, deadline - time.monotonic()))
        missing = []
        for job_id, job in final.items():
            statuses = collapse(wait_statuses(backend, job_id, job["status"], timeout=max(1.0, deadline - time.monotonic())))
            if not callbacks_in_order(statuses, job["status"]):
                missing.append(f"{job_id[:8]}: {statuses}")
        metrics_ok = service.http.get("/metrics").status_code == 200
    finally:
        service.stop()
        backend.close()
    outcomes = Counter("cancelled" if j["cancelled"] else j["status"] for j in final.values())
    gets = load.latencies["get"]
    stats = {
        "clients": clients, "seconds": seconds, "requests": load.requests, "throughput_rps": load.requests / seconds,
        "errors": dict(load.errors), "accepted": len(load.accepted), "outcomes": dict(outcomes), "callback_problems": missing,
        "latency_ms": {k: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)} for k, v in load.latencies.items() if v},
    }  # fmt: skip
    ok = not load.errors and not missing and len(final) == len(load.accepted) and metrics_ok
    row = Row("load", f"{clients} clients × {seconds:g} s", f"back-to-back requests: job polls, listings, {submit_per_s:g} submissions/s "
              f"(simulate, 4 workers), {cancel_per_s:g} cancels/s of random jobs",
              f"{load.requests} requests ({stats['throughput_rps']:.0f}/s), errors {dict(load.errors) or 0}; GET /jobs/{{id}} "
              f"p50 {percentile(gets, 50):.1f} ms, p99 {percentile(gets, 99):.1f} ms; {len(load.accepted)} jobs accepted, all final "
              f"({dict(outcomes)}), callbacks complete and in order for {len(final) - len(missing)}/{len(final)}. Machine load "
              f"average {load_before:.1f} → {load_during:.1f} (load generator, service, workers and other users' processes)",
              "PASS" if ok else "FAIL", time.monotonic() - started)  # fmt: skip
    return [row], stats


def real_latency_part(service: ReconDouble, clients: int = 10, interval_s: float = 0.05) -> tuple[list[Row], dict[str, Any]]:
    """Poll one real job from ``clients`` clients every ``interval_s`` until it ends; then wait for retention."""
    listed = service.http.get("/jobs", params={"limit": 1}).json()["jobs"]
    idle: list[float] = []
    if listed:  # the same polling with no pipeline running, for comparison
        idle, _, _ = asyncio.run(poll(service.url, listed[0]["job_id"], clients, interval_s, seconds=5.0, until_final=False))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    job_id = service.submit(copy_scene(service), options={"preset": "preview"})
    gets, errors, job = asyncio.run(asyncio.wait_for(poll(service.url, job_id, clients, interval_s, seconds=900), 960))
    load_after = os.getloadavg()[0]
    work_dir = service.models_root / job_id / "work"
    before = job.get("disk_bytes") or 0
    removed = _wait(lambda: not work_dir.exists(), 30)
    after = service.job(job_id)["disk_bytes"]
    kept = (service.models_root / job_id / "model.glb").exists()
    stats = {"job": job["status"], "message": job["message"], "samples": len(gets), "p50": percentile(gets, 50),
             "p95": percentile(gets, 95), "p99": percentile(gets, 99), "max": max(gets, default=float("nan")),
             "errors": dict(errors), "idle_p50": percentile(idle, 50), "idle_p99": percentile(idle, 99),
             "loadavg_1min": [load_before, load_after], "disk_bytes_before": before, "disk_bytes_after": after,
             "work_removed": removed}  # fmt: skip
    ok = stats["p99"] < P99_TARGET_MS and not errors and job["status"] == "completed"
    rows = [
        Row("real pipeline", "GET /jobs/{id} while a real job runs", f"{clients} clients each polling every {interval_s * 1000:g} ms "
            "(one also scraping /metrics every second) during a real preview job on the 12 fixture photos",
            f"job {job['status']} in {time.monotonic() - started:.0f} s; {len(gets)} polls: p50 {stats['p50']:.1f} ms, p95 "
            f"{stats['p95']:.1f} ms, p99 {stats['p99']:.1f} ms, max {stats['max']:.1f} ms (target p99 < {P99_TARGET_MS:g} ms); "
            f"errors {dict(errors) or 0}. Same polling with no job running: p50 {stats['idle_p50']:.1f} ms, p99 "
            f"{stats['idle_p99']:.1f} ms. Machine load average {load_before:.1f} → {load_after:.1f} on {psutil.cpu_count()} cores "
            "(other users' processes included)", "PASS" if ok else "FAIL", time.monotonic() - started),
        Row("real pipeline", "retention of the real job's work/", "RECON_RETENTION_S=5 on the same service",
            f"disk_bytes {before:,} → {after:,}; work/ {'removed' if removed else 'NOT removed'}; model.glb {'kept' if kept else 'MISSING'}",
            "PASS" if removed and kept else "FAIL", 0.0),
    ]  # fmt: skip
    return rows, stats


async def poll(
    url: str, job_id: str, clients: int, interval_s: float, seconds: float, *, until_final: bool = True
) -> tuple[list[float], Counter[str], dict[str, Any]]:
    """GET /jobs/{job_id} latencies (ms) from ``clients`` pollers for ``seconds`` or until the job is final; errors; the last answer."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    final: dict[str, Any] = {}
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, done.set)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:

        async def poller(i: int) -> None:
            next_scrape = time.monotonic()
            while not done.is_set():
                started = time.perf_counter()
                try:
                    response = await client.get(f"/jobs/{job_id}")
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors[f"HTTP {response.status_code}"] += 1
                    continue
                final.update(response.json())
                if until_final and final["status"] in ("completed", "failed"):
                    done.set()
                if i == 0 and time.monotonic() >= next_scrape:
                    next_scrape += 1.0
                    if (await client.get("/metrics")).status_code != 200:
                        errors["metrics"] += 1
                await asyncio.sleep(interval_s)

        await asyncio.gather(*(poller(i) for i in range(clients)))
    return latencies, errors, final


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


# -- the report ----------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return (f"{platform.node()}: {cpu}, {psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, git {commit or '?'} (plus uncommitted changes)")  # fmt: skip


def write_report(rows: list[Row], extras: dict[str, Any], started: datetime, seconds: float, path: Path) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    counts = Counter(r.result for r in rows)
    lines = [
        "# Reliability report",
        "",
        f"Generated by `make reliability` (`python -m bench.reliability`) on {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min.",
        f"Machine: {machine()}. All traffic on 127.0.0.1.",
        "",
        f"**{counts['PASS']} passed, {counts['FAIL']} failed, {counts['XFAIL']} known bugs (xfail, reported), {counts['SKIP']} skipped.**",
        "",
    ]
    for part in dict.fromkeys(r.part for r in rows):
        lines += [f"## {part}", "", "| Case | What was tried | What was observed | Result | s |", "|---|---|---|---|---|"]
        lines += [f"| {cell(r.case)} | {cell(r.tried)} | {cell(r.observed)} | {r.result} | {r.seconds:.1f} |" for r in rows if r.part == part]
        lines.append("")
    if extras:
        lines += ["## Numbers", "", "```json", json.dumps(extras, indent=2, default=str), "```", ""]
    write_text_atomic(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s of load, 2 kill rounds, real kills in 3 stages only")
    parser.add_argument("--skip-real", action="store_true", help="leave out the parts that run the real pipeline")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=None, help="load duration (default 60, 20 with --quick)")
    parser.add_argument("--parts", default="tests,kills,real,load", help="comma-separated subset of: tests, kills, real, load")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    began, clock = datetime.now(UTC), time.monotonic()
    rows: list[Row] = []
    extras: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recon-reliability-") as tmp:
        work = Path(tmp)
        parts = set(args.parts.split(","))
        if "tests" in parts:
            print("pytest tests/reliability tests/api/test_api_fuzz.py ...", file=sys.stderr, flush=True)
            rows += pytest_part(work, timeout_s=300)
        if "kills" in parts:
            print("service SIGKILL rounds ...", file=sys.stderr, flush=True)
            rows += service_kill_rounds(work, rounds=2 if args.quick else 4)
        if "real" in parts and not args.skip_real:
            print("real pipeline: worker SIGKILL in each stage ...", file=sys.stderr, flush=True)
            backend = CallbackRecorder(CALLBACK_TOKEN)
            real = start(work / "real", backend, RECON_PIPELINE="real", RECON_RETENTION_S="5")
            try:
                rows += real_worker_kills(real, backend, ("ingest", "sparse", "mesh") if args.quick else STAGES)
                print("real pipeline: GET latency while a job runs, retention ...", file=sys.stderr, flush=True)
                latency_rows, extras["real_pipeline_latency_ms"] = real_latency_part(real)
                rows += latency_rows
            finally:
                real.stop()
                backend.close()
        if "load" in parts:
            print(f"load: {args.clients} clients ...", file=sys.stderr, flush=True)
            load_rows, extras["load"] = load_part(work, args.clients, args.seconds or (20.0 if args.quick else 60.0))
            rows += load_rows
    write_report(rows, extras, began, time.monotonic() - clock, args.out)
    failed = [r for r in rows if r.result == "FAIL"]
    print(f"wrote {args.out}: {len(rows)} cases, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
