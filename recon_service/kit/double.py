"""The service as a contract double: ``python -m recon_service`` in simulate mode, as a child process.

:class:`ReconDouble` is the real service -- HTTP API, job store, worker processes, callback outbox
-- with ``RECON_PIPELINE=simulate``, on a free loopback port, with all its data in one folder.
It can be stopped, SIGKILLed and started again on the same data, so a backend's CI (and this
project's own tests) can try restarts and outages for real.

The child runs in isolated mode (``python -I``: no ``PYTHONPATH``, no user site, not the
caller's working directory) with this package's own location first on its path, so a caller's
modules -- a backend with its own top-level ``pipelines`` or ``fixtures`` package -- can never
shadow the service's. Standard library only at import time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recon_service.kit.photos import write_jpegs
from recon_service.kit.ports import free_port

if TYPE_CHECKING:
    import httpx

    from recon_service.kit.client import ReconClient

START_TIMEOUT_S = 60.0
"""How long the double may take to answer /readyz after its process starts (seconds)."""
STOP_TIMEOUT_S = 20.0
"""How long a clean shutdown (SIGTERM) may take before the process group is killed (seconds)."""
FAST_CALLBACK_ENV = {
    "RECON_CALLBACK_RETRY_INITIAL_S": "0.05",
    "RECON_CALLBACK_RETRY_MAX_S": "0.5",
    "RECON_PROGRESS_CALLBACK_INTERVAL_S": "0.2",
}
"""The double retries failed callbacks within about a second (not minutes), to keep CI fast."""
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding this ``recon_service`` (and its ``pipelines``): first on the child's path."""
_BOOT = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('recon_service', run_name='__main__', alter_sys=True)"
)
"""The child's entry: put the service's own location first on the path, then run ``python -m recon_service``."""
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".heic", ".heif")


@dataclass
class ReconDouble:
    """The real service in simulate mode, as a child process with everything under ``root``.

    ``root`` holds ``data/`` (job store), ``models/`` (MODEL_OUTPUT_ROOT), ``uploads/``
    (RECON_PHOTOS_ROOT: jobs' ``photos_dir`` must be inside; ``uploads_root`` puts it elsewhere,
    e.g. on the backend's own upload folder) and ``service.log``. ``env`` adds or
    overrides RECON_* variables (e.g. ``RECON_MAX_WORKERS``). Use as a context manager, or
    :meth:`start` / :meth:`stop`; :meth:`start` again after :meth:`stop` or :meth:`kill` restarts
    it on the same data (and, when it is still free, the same port).
    """

    root: Path
    callback_url: str | None = None
    callback_token: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    uploads_root: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _client: ReconClient | None = field(default=None, init=False, repr=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    # -- where things are ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def photos_root(self) -> Path:
        """RECON_PHOTOS_ROOT of the double: ``uploads_root``, or ``root/uploads``."""
        return self.uploads_root if self.uploads_root is not None else self.root / "uploads"

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "service.log"

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def client(self) -> ReconClient:
        """A :class:`~recon_service.kit.client.ReconClient` for this double (quick retries)."""
        if self._client is None:
            from recon_service.kit.client import ReconClient, RetryPolicy

            self._client = ReconClient(self.url, self.token, retries=RetryPolicy(attempts=3, initial_s=0.1, max_s=0.5, jitter_s=0.1))
        return self._client

    @property
    def http(self) -> httpx.Client:
        """A plain ``httpx.Client`` on the double's URL with its token, for raw requests (status codes, error bodies)."""
        if self._http is None:
            import httpx

            self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        return self._http

    # -- the process -----------------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> ReconDouble:
        """Start the process; with ``wait``, until ``/readyz`` answers 200 (another port is tried if this one is taken)."""
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            self._close_clients()
            self._spawn()
            if not wait or self._wait_ready():
                return self
        raise RuntimeError(f"recon-service double did not start; its log ({self.log_path}):\n{self.log()[-4000:]}")

    def _spawn(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.photos_root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECON_") and k != "MODEL_OUTPUT_ROOT"}
        env |= {
            "RECON_PIPELINE": "simulate",
            "RECON_SERVICE_TOKEN": self.token,
            "RECON_HOST": "127.0.0.1",
            "RECON_PORT": str(self.port),
            "RECON_DATA_DIR": str(self.data_dir),
            "MODEL_OUTPUT_ROOT": str(self.models_root),
            "RECON_PHOTOS_ROOT": str(self.photos_root),
            "RECON_MAX_WORKERS": "4",
            "PYTHONUNBUFFERED": "1",
            **FAST_CALLBACK_ENV,
        }
        if self.callback_url:
            env |= {"RECON_CALLBACK_URL": self.callback_url, "RECON_CALLBACK_TOKEN": self.callback_token or ""}
        env |= self.env
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, str(PACKAGE_ROOT)],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self) -> bool:
        """True once ready; False if the process died because its port was taken meanwhile."""
        import httpx

        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        interval = 0.02
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                taken = "address already in use" in self.log().lower()
                self._proc = None
                if taken:
                    return False
                raise RuntimeError(f"recon-service double exited during start-up; its log:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(interval)  # the process gives no other signal than answering
            interval = min(interval * 2, 0.2)
        self.stop()
        raise RuntimeError(f"recon-service double not ready after {START_TIMEOUT_S:g} s; its log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM (clean shutdown), then kill whatever is left of its process group (workers)."""
        self._close_clients()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # this double's leftover workers only (its own session)

    def kill(self) -> None:
        """SIGKILL the server process only, as a crash would; its workers notice and stop by themselves."""
        self._close_clients()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def _close_clients(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def wait_exit(self, timeout: float) -> int:
        """Wait for the server process to end by itself (e.g. a start-up refused); its exit code."""
        if self._proc is None:
            raise RuntimeError("the double is not running")
        return self._proc.wait(timeout=timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """Everything the service wrote to stderr (JSON lines), for assertions and failure messages."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ReconDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- jobs ------------------------------------------------------------------------------------
    def make_photos(self, count: int, name: str | None = None, *, size: tuple[int, int] = (320, 240)) -> Path:
        """A new folder ``photos_root/<name>`` of ``count`` valid JPEGs (``photo_1.jpg`` ...), like the backend's uploads."""
        return write_jpegs(self.photos_root / (name or uuid.uuid4().hex), count, size=size)

    def payload(self, photos_dir: Path | str, **fields: Any) -> dict[str, Any]:
        """A ``POST /jobs`` body for the photos in ``photos_dir`` (a folder, or an ``s3://`` URI): a new ``job_id``,
        ``photo_count`` counted in a folder; ``fields`` override."""
        if isinstance(photos_dir, str) and "://" in photos_dir:
            return {"job_id": str(uuid.uuid4()), "dataset_name": "test scan", "photo_count": 3, "photos_dir": photos_dir} | fields
        photos_dir = Path(photos_dir)
        count = sum(1 for p in photos_dir.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if photos_dir.is_dir() else 3
        body = {"job_id": str(uuid.uuid4()), "dataset_name": "test scan", "photo_count": count, "photos_dir": str(photos_dir)}
        return body | fields

    def submit(self, photos: int | Path | str | None = None, *, photo_count: int | None = None, job_id: str | None = None, **fields: Any) -> str:
        """Submit a new job and return its id: of ``photos`` (or ``photo_count``, default 3) new JPEGs, or of
        the photos in the folder (or ``s3://`` location) ``photos``.

        ``fields`` adds to or overrides the body (``notes``, ``options``, ``simulate``, ...; a
        ``photo_count`` with a folder overrides the count); anything but 202 raises with the service's error.
        """
        if photos is None:
            photos, photo_count = photo_count or 3, None
        folder = self.make_photos(photos, job_id) if isinstance(photos, int) else photos
        if photo_count is not None:
            fields["photo_count"] = photo_count
        body = self.payload(folder, **fields)
        if job_id is not None:
            body["job_id"] = job_id
        response = self.http.post("/jobs", json=body)
        if response.status_code != 202:
            raise AssertionError(f"POST /jobs answered {response.status_code}: {response.text}")
        return body["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{job_id}`` as the raw JSON object (every additive field included)."""
        response = self.http.get(f"/jobs/{job_id}")
        if response.status_code != 200:
            raise AssertionError(f"GET /jobs/{job_id} answered {response.status_code}: {response.text}")
        return response.json()

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed"), timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the job's ``status`` is one of ``statuses``; return it raw. ``AssertionError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not reach {statuses} within {timeout:g} s; last seen: {job}")
