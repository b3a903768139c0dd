"""Installed size of the light install and of the full one, each in a fresh venv at the locked versions.

``python -m bench.install_size`` builds this checkout's wheel, installs it into two fresh venvs
(``recon-service`` and ``recon-service[pipeline]``, constrained by ``requirements.lock``) and
prints the size of each venv's site-packages and its largest packages, as Markdown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _site_packages(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def measure(uv: str, wheel: Path, extra: str, root: Path) -> tuple[int, list[tuple[str, int]]]:
    """(bytes of site-packages, the ten largest top-level entries) of a fresh venv with ``recon-service{extra}``."""
    venv = root / f"venv{extra or '-base'}"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-c", str(REPO / "requirements.lock"),
                    f"recon-service{extra} @ {wheel.as_uri()}"], check=True)  # fmt: skip
    site = _site_packages(venv)
    parts = sorted(((p.name, _du(p) if p.is_dir() else p.stat().st_size) for p in site.iterdir()), key=lambda x: -x[1])
    return _du(site), parts[:10]


def main() -> int:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"
    with tempfile.TemporaryDirectory(prefix="recon-install-size-") as tmp:
        root = Path(tmp)
        subprocess.run([uv, "build", "--quiet", "--wheel", "--out-dir", str(root / "wheels"), str(REPO)], check=True, cwd=root)
        (wheel,) = (root / "wheels").glob("*.whl")
        for label, extra in (("light (recon-service)", ""), ("full (recon-service[pipeline])", "[pipeline]")):
            total, largest = measure(uv, wheel, extra, root)
            print(f"{label}: {total / 2**20:.0f} MiB in site-packages; largest: "
                  + ", ".join(f"{name} {size / 2**20:.0f}" for name, size in largest[:6]), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
