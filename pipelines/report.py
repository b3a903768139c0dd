"""report.json: what a run used, what it produced, and what each stage cost.

Each stage result carries a ``summary()`` of JSON-able numbers; this module only collects them,
adds timings, peak memory and software versions, and writes the file atomically.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.files import write_text_atomic
from pipelines.options import ReconOptions, options_to_dict

SOFTWARE = ("recon-service", "pycolmap", "open3d-cpu", "open3d", "trimesh", "numpy", "opencv-python-headless", "usd-core", "fast-simplification")


def peak_rss_mb() -> float:
    """High-water mark of resident memory of this process and its waited-for children (MiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # ru_maxrss is KiB on Linux


@dataclass
class StageTimings:
    """Wall seconds per stage and the process's peak RSS (MiB) when each stage ended."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 3)
            self.peak_rss_mb[stage] = round(peak_rss_mb(), 1)

    def total(self) -> float:
        return round(sum(self.seconds.values()), 3)


def software_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in SOFTWARE:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _summary(result: Any) -> dict[str, Any]:
    return result.summary() if hasattr(result, "summary") else {}


def build(*, options: ReconOptions, timings: StageTimings, simulated: bool = False, **results: Any) -> dict[str, Any]:
    """The report: options, versions, timings, and each stage's summary under its own key."""
    report: dict[str, Any] = {
        "simulated": simulated,
        "options": options_to_dict(options),
        "software": software_versions(),
        "cpu_count": os.cpu_count(),
        "seconds": dict(timings.seconds),
        "total_seconds": timings.total(),
        "peak_rss_mb": dict(timings.peak_rss_mb),
    }
    for name, result in results.items():
        report[name] = _summary(result)
    return report


def write(report: dict[str, Any], path: Path) -> Path:
    """Write ``report`` as JSON to ``path`` via a temporary name, so readers never see half a file."""
    return write_text_atomic(path, json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
