"""The photos of a job's folder: which entries count, and reading each exactly once.

A photo folder belongs to someone else (the backend's upload area) and may change while we look
at it. So nothing here checks a path and then opens it again by path: the folder is opened once
(a directory descriptor), each photo is opened relative to it with ``O_NOFOLLOW | O_NONBLOCK``
(a symbolic link is refused, a FIFO cannot block us), checked with ``fstat`` on that descriptor
(a regular file, not too large), and read from that same descriptor. Listing and checking
(:meth:`PhotoFolder.problems`) use ``lstat`` only and never open anything.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import InvalidInput

PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".heic", ".heif"})
PHOTO_KINDS = "/".join(sorted(e.lstrip(".") for e in PHOTO_EXTENSIONS))
"""The accepted kinds, for messages: ``heic/heif/jpeg/jpg/png``."""


def is_photo_name(name: str) -> bool:
    """A visible file name with a photo extension (``.DS_Store`` and ``._IMG_1.JPG`` are not photos)."""
    return not name.startswith(".") and Path(name).suffix.lower() in PHOTO_EXTENSIONS


class PhotoRefused(Exception):
    """A photo-named entry that must not be read: not a regular file, a link, or too large."""

    def __init__(self, name: str, problem: str, *, special: bool) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem
        self.special = special
        """True when the entry is not a regular file at all (a link, FIFO, device, folder)."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link (links are not followed); upload the photo itself"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a photo file; remove it and upload regular image files"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a photo file; remove it and upload regular image files"
    if stat.S_ISDIR(mode):
        return "a folder, not a photo file; remove it and upload regular image files"
    return "a socket or special file, not a photo file; remove it and upload regular image files"


@dataclass(frozen=True)
class PhotoData:
    """One photo's bytes, read from the descriptor that was checked."""

    name: str
    data: bytes


class PhotoFolder:
    """A photo folder opened once; photos are listed, checked and read relative to its descriptor.

    ``max_bytes`` refuses larger photos before reading them. Use as a context manager.
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        # O_NOFOLLOW: the folder itself was resolved when the job was submitted; a link put in its
        # place since then is refused (ELOOP) instead of followed.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    @classmethod
    def open_photos(cls, path: Path, *, max_bytes: int | None = None) -> PhotoFolder:
        """The folder of a run's photos, or :class:`InvalidInput` saying why it cannot be opened."""
        try:
            return cls(path, max_bytes=max_bytes)
        except FileNotFoundError:
            raise InvalidInput(f"photos folder {str(path)!r} no longer exists (removed after submission?); upload the photos again") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInput(f"photos folder {str(path)!r} was replaced by a symbolic link; upload the photos again") from None
            raise InvalidInput(f"photos folder {str(path)!r} cannot be opened ({exc.strerror or exc}); upload the photos again") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PhotoFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """Photo-named entries, sorted (whatever they are; :meth:`problems` says which cannot be read)."""
        return sorted(name for name in os.listdir(self._fd) if is_photo_name(name))

    def problems(self) -> list[tuple[str, str]]:
        """``(name, problem)`` of each photo-named entry that :meth:`read` would refuse (``lstat`` only)."""
        found = []
        for name in self.names():
            try:
                st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked: it is simply not there
            refused = self._refusal(name, st)
            if refused is not None:
                found.append((name, refused.problem))
        return found

    def _refusal(self, name: str, st: os.stat_result) -> PhotoRefused | None:
        if not stat.S_ISREG(st.st_mode):
            return PhotoRefused(name, "is " + _kind(st.st_mode), special=True)
        if self.max_bytes is not None and st.st_size > self.max_bytes:
            return PhotoRefused(name, f"is {st.st_size:,} bytes, more than the limit of {self.max_bytes:,} bytes per photo", special=False)
        return None

    def read(self, name: str) -> PhotoData:
        """The bytes of photo ``name``, or :class:`PhotoRefused`; ``OSError`` if it cannot be read."""
        if "/" in name or name in (".", ".."):
            raise PhotoRefused(name, "is not a file name inside the photo folder", special=True)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symbolic link
                raise PhotoRefused(name, "is " + _kind(stat.S_IFLNK), special=True) from None
            raise
        with os.fdopen(fd, "rb") as f:
            refused = self._refusal(name, os.fstat(fd))
            if refused is not None:
                raise refused
            limit = self.max_bytes
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:  # it grew after the fstat
            raise PhotoRefused(name, f"is more than the limit of {limit:,} bytes per photo", special=False)
        return PhotoData(name, data)


def list_photos(photos_dir: Path) -> list[str]:
    """Names of the photo-named entries of ``photos_dir``, sorted (cheap: nothing is opened or decoded)."""
    with PhotoFolder(photos_dir) as folder:
        return folder.names()
