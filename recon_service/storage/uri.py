"""``s3://bucket/prefix`` locations, parsed and checked once, so no key is ever built from unchecked text.

Keys are made only by :meth:`S3Location.child` from names this service chose (a job id that is a
UUID, ``photo_3.jpg``, an artifact's relative path): never from ``dataset_name`` or other free text,
and never with ``..``, an absolute part, a backslash or a control character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class InvalidLocation(ValueError):
    """An ``s3://`` URI (or another scheme) this service cannot use; the message says why."""


def has_scheme(value: str) -> bool:
    """``value`` looks like a URI (``scheme://...``) rather than a file system path."""
    return bool(_SCHEME.match(value))


def _check_segment(segment: str, uri: str) -> None:
    if segment in ("", ".", "..") or "\\" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment):
        raise InvalidLocation(f"{uri!r} has a path segment {segment!r} that is not allowed (empty, '.', '..', backslash or control character)")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing ``/``; empty for the bucket's root)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """``s3://bucket/some/prefix/`` → ``S3Location("bucket", "some/prefix")``, or :class:`InvalidLocation`."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise InvalidLocation(f"must be an s3://bucket/prefix URI, not {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise InvalidLocation(f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.' and '-')")
        key = key.rstrip("/")
        for segment in key.split("/") if key else ():
            _check_segment(segment, uri)
        return cls(bucket, key)

    def child(self, *parts: str) -> S3Location:
        """This location with ``parts`` appended (each checked like a parsed segment)."""
        segments = [s for part in parts for s in part.split("/")]
        for segment in segments:
            _check_segment(segment, f"{self.uri}/{'/'.join(parts)}")
        return S3Location(self.bucket, "/".join(filter(None, [self.prefix, *segments])))

    @property
    def key(self) -> str:
        """The prefix read as an object key."""
        return self.prefix

    @property
    def key_prefix(self) -> str:
        """The prefix for listing what is inside: ``"a/b/"`` (``""`` at the bucket's root)."""
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.uri


def parse_output_root(value: Any) -> Any:
    """MODEL_OUTPUT_ROOT as given: an ``s3://`` URI becomes an :class:`S3Location`; any other scheme is refused."""
    if isinstance(value, str) and has_scheme(value):
        if value.startswith("s3://"):
            return S3Location.parse(value)
        raise InvalidLocation(f"only a local folder or an s3://bucket/prefix URI is supported, not {value!r}")
    return value
