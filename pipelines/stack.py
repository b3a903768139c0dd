"""Whether this environment has the reconstruction stack (the ``recon-service[pipeline]`` extra).

The light install (service, contract double, client kit) runs the simulate pipeline only; the
real one needs the packages below. They are looked up without being imported (importing pycolmap
and Open3D costs seconds and hundreds of MB), so the service can say what is missing at once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path

REAL_PIPELINE_PACKAGES: dict[str, str] = {
    "pycolmap": "pycolmap",
    "open3d": "open3d-cpu",
    "cv2": "opencv-python-headless",
    "scipy": "scipy",
    "fast_simplification": "fast-simplification",
    "pillow_heif": "pillow-heif",
}
"""Module the real pipeline imports → the distribution that provides it."""
INSTALL_HINT = "pip install 'recon-service[pipeline]'"


def missing_packages() -> list[str]:
    """Distributions of the real pipeline that are not installed here (empty when all are)."""
    return [dist for module, dist in REAL_PIPELINE_PACKAGES.items() if importlib.util.find_spec(module) is None]


def stack_problem() -> str | None:
    """What to install for the real pipeline, or ``None`` when it can run here."""
    missing = missing_packages()
    if not missing:
        return None
    return f"the reconstruction stack is not installed (missing: {', '.join(missing)}); install it with {INSTALL_HINT}, or run RECON_PIPELINE=simulate"


def import_native_libraries() -> None:
    """Import pycolmap now, before a caller installs its own SIGTERM handler.

    Importing pycolmap installs glog's failure signal handler, which takes over SIGTERM at the C
    level (it prints a stack trace and exits) and so silently replaces a Python handler installed
    earlier. Importing it first lets the handler installed afterwards win.
    """
    import pycolmap  # noqa: F401


@functools.cache
def cuda_available() -> bool:
    """Whether COLMAP's CUDA stereo can run here: a CUDA build of pycolmap and an NVIDIA driver.

    Decided without importing pycolmap (seconds, hundreds of MB, and no GPU query needed): the
    CUDA wheels are their own distributions (``pycolmap-cuda12``), and a loaded NVIDIA driver
    shows ``/proc/driver/nvidia``. ``pipelines.dense.run`` checks ``pycolmap.has_cuda`` again.
    """
    cuda_build = any((d.metadata["Name"] or "").lower().startswith("pycolmap-cuda") for d in importlib.metadata.distributions())
    return cuda_build and Path("/proc/driver/nvidia").is_dir()
