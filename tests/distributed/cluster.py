"""Real parts of a distributed deployment, started by the tests: redis-server, recon-worker processes.

``RedisServer`` is the Debian ``redis-server`` on a free loopback port with its own data folder
(append-only file on, so a restart keeps what was queued). ``Worker`` is one ``recon-worker`` host:
its own scratch and data folders (nothing shared with the API node but the broker, the photo
root and the output root, as two hosts would share a mount or a bucket), in a session of its own so
that "the host is lost" is one ``killpg``. ``Cluster`` is a whole deployment: Redis, an API node
(RECON_EXECUTOR=celery) and worker hosts; what they share is what hosts would: the broker, the
photo root (a shared mount) and MODEL_OUTPUT_ROOT (a shared mount or a bucket).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from recon_service.kit import CallbackRecorder, ReconDouble, free_port
from tests.helpers import double

REDIS = shutil.which("redis-server")
INSTALL_HINT = "redis-server is not installed: apt-get install redis-server (scripts/bootstrap.sh does, as root)"


class RedisServer:
    def __init__(self, root: Path) -> None:
        if REDIS is None:
            raise RuntimeError(INSTALL_HINT)
        self.root = root
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        self.root.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server did not start: {(self.root / 'redis.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop (SIGTERM: the append-only file is flushed) and start again on the same port and data."""
        self.stop()
        self.start()


class Worker:
    """``recon-worker`` as one host: its own folders, a session of its own."""

    def __init__(
        self, name: str, root: Path, env: dict[str, str], concurrency: int = 1, queues: str = "preview,default"
    ) -> None:
        self.name, self.root = name, root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECON_") and k != "MODEL_OUTPUT_ROOT"} | env | {
            "RECON_SCRATCH_DIR": str(root / "scratch"), "RECON_DATA_DIR": str(root / "data"), "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        self.args = ["--name", f"{name}@test", "--concurrency", str(concurrency), "--queues", queues]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "worker.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Worker:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("recon-worker")), *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def processes(self) -> list[int]:
        """The worker's process and all its descendants (pool processes, attempts, pipeline children)."""
        if self._proc is None:
            return []
        try:
            main = psutil.Process(self._proc.pid)
            return [main.pid, *(p.pid for p in main.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def lose(self) -> list[int]:
        """The worker host is lost: SIGKILL to ``recon-worker`` and its pool processes (not to the attempts
        they started: those must not outlive them). Returns the pids of every process it had."""
        pids = self.processes()
        for pid in pids:
            try:
                if "recon-worker" in " ".join(psutil.Process(pid).cmdline()):
                    os.kill(pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        if self._proc is not None:
            self._proc.wait()
        self._proc = None
        return pids

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of its session
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    root: Path
    redis: RedisServer
    api: ReconDouble
    workers: list[Worker] = field(default_factory=list)

    @property
    def shared_env(self) -> dict[str, str]:
        """What every host of the deployment is configured with alike."""
        return {
            "RECON_PIPELINE": self.api.env.get("RECON_PIPELINE", "simulate"),
            "RECON_BROKER_URL": self.redis.url,
            "RECON_PHOTOS_ROOT": str(self.api.photos_root),
            "MODEL_OUTPUT_ROOT": str(self.api.models_root),
            "RECON_WORKER_LEASE_S": self.api.env["RECON_WORKER_LEASE_S"],
            "RECON_JOB_TIMEOUT_S": self.api.env.get("RECON_JOB_TIMEOUT_S", "3600"),
            "RECON_LOG_LEVEL": "INFO",
        }

    def add_worker(
        self,
        name: str | None = None,
        *,
        concurrency: int = 1,
        queues: str = "preview,default",
        env: dict[str, str] | None = None,
    ) -> Worker:
        name = name or f"w{len(self.workers) + 1}"
        worker = Worker(name, self.root / name, self.shared_env | (env or {}), concurrency=concurrency, queues=queues)
        self.workers.append(worker)
        return worker.start()

    @classmethod
    def start(cls, root: Path, backend: CallbackRecorder | None, workers: int = 2, env: dict[str, str] | None = None,
              worker_env: dict[str, str] | None = None) -> Cluster:  # fmt: skip
        """Redis, an API node with RECON_EXECUTOR=celery calling back to ``backend``, and ``workers`` worker hosts, under ``root``."""
        redis = RedisServer(root / "redis").start()
        api_env = {
            "RECON_EXECUTOR": "celery",
            "RECON_BROKER_URL": redis.url,
            "RECON_WORKER_LEASE_S": "3",
            **(env or {}),
        }
        cluster = cls(root, redis, double(root / "api", root / "uploads", api_env, backend))
        try:
            cluster.api.start()
            for _ in range(workers):
                cluster.add_worker(env=worker_env)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        self.api.stop()
        for worker in self.workers:
            worker.stop()
        self.redis.stop()
