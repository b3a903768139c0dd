"""Long library calls in a child process: killable on cancel, and never outliving their parent.

Some calls hold the GIL for their whole run or take no cancellation token (Open3D's Poisson
reconstruction, COLMAP's global mapper). In a child process they can be killed at once on cancel,
a crash in them becomes a named stage failure instead of taking the worker down, and progress can
still be reported while they run.

The child is ``python -m <module> [args]``; its module calls :func:`die_with_parent` first, so it
is killed (``PR_SET_PDEATHSIG``) when the process that started it dies, even by SIGKILL. Linux
delivers that signal when the parent *thread* ends, so a :class:`ChildProcess` must be started
from a thread that lives as long as the child is needed (the pipeline's own thread does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, cast

from pipelines.progress import CancelToken

PARENT_PID_ENV = "RECON_CHILD_PARENT_PID"
"""The pid a child expects as its parent; it exits at once if the parent is already gone."""
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding ``pipelines/``: first on the child's path, so nobody else's ``pipelines`` shadows ours."""


class ChildProcess:
    """``python -m module args...``, started on creation, output to ``log_path``, killed on exit.

    Start it early when the child's imports are slow (Open3D): they overlap the caller's work.
    Use as a context manager; leaving the block kills a child that is still running.
    """

    def __init__(self, module: str, args: Sequence[str], log_path: Path, *, stdin: bool = False) -> None:
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
            PARENT_PID_ENV: str(os.getpid()),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, text: str) -> None:
        """Write ``text`` to the child's stdin and close it (a child that already died is reported by :meth:`wait`)."""
        stdin = cast(IO[bytes], self._proc.stdin)
        try:
            stdin.write(text.encode())
            stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, cancel: CancelToken, tick: Callable[[float], None] | None = None, tick_s: float = 1.0) -> int:
        """Wait for the child's exit code; kill it and raise ``Cancelled`` on cancel.

        ``tick(elapsed_seconds)`` is called about every ``tick_s`` seconds while it runs.
        """
        start = last = time.monotonic()
        while self._proc.poll() is None:
            if cancel.wait(min(0.1, tick_s)):
                self.kill()
                cancel.check()
            now = time.monotonic()
            if tick is not None and now - last >= tick_s:
                last = now
                tick(now - start)
        return self._proc.returncode

    def log_tail(self, max_bytes: int = 800) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-max_bytes:].decode(errors="replace").strip()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        self.kill()
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        self._log.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def die_with_parent() -> None:
    """In a child started by :class:`ChildProcess`: be killed when the parent dies (Linux).

    Exits at once when the parent died before this call (the window ``PR_SET_PDEATHSIG`` cannot cover).
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's kill on cancel and exit still applies
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if (expected is not None and os.getppid() != int(expected)) or os.getppid() == 1:
        os._exit(1)
