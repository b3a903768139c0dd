"""The light install as a backend gets it: a fresh venv, the lowest versions pyproject allows, no reconstruction stack.

The backend's project has top-level ``pipelines`` and ``fixtures`` packages of its own and puts its
root on ``PYTHONPATH`` (as many CI setups do); the shipped ``examples/backend_ci_example`` must
still pass there, since nothing of the caller's may shadow the service's modules.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "backend_ci_example"
HEAVY = ("pycolmap", "open3d", "cv2", "scipy", "pillow_heif", "fast_simplification")


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed; it is part of the dev extra (make install)")
    return uv


def _floors() -> list[str]:
    """The base dependencies pinned to their floors: ``fastapi>=0.115`` → ``fastapi==0.115``."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = []
    for dep in deps:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep).groups()  # type: ignore[union-attr]
        pinned.append(f"{name}=={floor}")
    return pinned


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with this checkout's wheel and its base dependencies at their floors; its python."""
    uv, tmp = _uv(), tmp_path_factory.mktemp("light")
    wheels = tmp / "wheels"
    _run([uv, "build", "--wheel", "--out-dir", str(wheels), str(REPO)], cwd=tmp)
    (wheel,) = wheels.glob("recon_service-*.whl")
    venv = tmp / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--quiet", "--python", str(python), *_floors(), "pytest"])
    _run([uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(wheel)])
    return python


def test_the_light_install_has_no_reconstruction_stack_and_a_real_service_says_what_to_install(light_venv: Path, tmp_path: Path) -> None:
    python = str(light_venv)
    installed = _run([python, "-c", f"import importlib.util; print([m for m in {HEAVY!r} if importlib.util.find_spec(m)])"]).stdout
    assert installed.strip() == "[]", f"the light install pulled in the reconstruction stack: {installed}"
    script = (
        "import sys, time, httpx; from pathlib import Path; from recon_service.kit import ReconDouble\n"
        "d = ReconDouble(Path(sys.argv[1]), env={'RECON_PIPELINE': 'real'}).start(wait=False)\n"
        "try:\n"
        "    for _ in range(300):\n"
        "        try:\n"
        "            r = httpx.get(d.url + '/readyz', timeout=2); break\n"
        "        except httpx.HTTPError: time.sleep(0.1)\n"
        "    s = d.http.post('/jobs', json=d.payload(d.make_photos(3)))\n"
        "    print(r.status_code, s.status_code); print(r.json()['error']); print(s.json()['error'])\n"
        "finally:\n"
        "    d.stop()\n"
    )
    ready, error, refused = _run([python, "-c", script, str(tmp_path / "real")]).stdout.splitlines()
    assert ready == "503 503"
    for message in (error, refused):
        assert "pip install 'recon-service[pipeline]'" in message and "pycolmap" in message, message


def test_a_backend_with_its_own_pipelines_package_passes_the_ci_example_on_the_lowest_light_install(light_venv: Path, tmp_path: Path) -> None:
    python, venv = str(light_venv), light_venv.parent.parent
    project = tmp_path / "backend"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("pipelines", "fixtures"):  # the backend's own packages, named like the service's
        (project / package).mkdir()
        (project / package / "__init__.py").write_text(f'"""The backend\'s own {package} (not recon-service\'s)."""\nOWNER = "backend"\n')
    (project / "conftest.py").write_text("import pipelines\n\nassert pipelines.OWNER == 'backend'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "PYTEST_", "VIRTUAL_ENV"))}
    env |= {"PYTHONPATH": str(project), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(tmp_path / "report.xml")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = (tmp_path / "report.xml").read_text()
    assert 'tests="3"' in report and 'failures="0"' in report and 'errors="0"' in report
