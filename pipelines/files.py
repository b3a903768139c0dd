"""Writing files and folders so that readers never see half of one.

Every artifact is written under a temporary name in its own folder and renamed over the final
name (``os.replace`` is atomic on one filesystem): a crash, a kill or a full disk leaves the old
file or no file, never a truncated one. Temporary names keep the final suffix, because many
writers pick the format from it (``cv2.imwrite``, Open3D, ``np.save``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """A name next to ``path`` for writing it: hidden, unique to this process, same suffix."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh ``<path>.partial`` folder to fill; on success it replaces ``path`` as a whole.

    On error the partial folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)


def write_png(path: Path, pixels: Any, *, channels: str = "rgb", compression: int = 3) -> Path:
    """Write an 8-bit image as PNG atomically: ``pixels`` (H, W) grey, or (H, W, 3) in ``channels`` order
    (``"rgb"`` or ``"bgr"``, OpenCV's own). ``compression`` 0..9 (1 is fast, 9 small). ``OSError`` on failure."""
    import cv2
    import numpy as np

    data = pixels[:, :, ::-1] if channels == "rgb" and pixels.ndim == 3 else pixels
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, compression]):
            raise OSError(f"could not write {path}; check free disk space")
    return Path(path)
