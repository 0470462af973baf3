"""Storage URIs: local paths (plain or ``file://``) and ``s3://bucket/key``.

``file://`` is a literal prefix (no percent-decoding, like fsspec), so every URI that
:func:`join` or a listing produces reads back unchanged.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SUPPORTED = "local paths, file:///absolute/path or s3://bucket/key"
_FILE_PREFIX = "file://"
_S3_PREFIX = "s3://"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Lenient on purpose (legacy buckets may hold upper case or '_'); the server has the last word.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


class Scheme(str, Enum):
    """Which backend a URI belongs to."""

    local = "file"
    s3 = "s3"


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://bucket/key``; ``key`` is empty for a bucket root."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{_S3_PREFIX}{self.bucket}/{self.key}"


def scheme_of(uri: str) -> Scheme:
    """The backend for ``uri``; raises ValueError for blank URIs and unknown schemes."""
    if not uri or not uri.strip():
        raise ValueError(f"storage URI is empty; give one of: {SUPPORTED}")
    match = _SCHEME.match(uri)
    if match is None:
        return Scheme.local
    scheme = match.group(1).lower()
    if scheme == Scheme.local.value:
        return Scheme.local
    if scheme == Scheme.s3.value:
        return Scheme.s3
    raise ValueError(f"unsupported scheme {scheme!r} in {uri!r}; supported: {SUPPORTED}")


def parse_s3(uri: str, *, need_key: bool = True) -> S3Location:
    """Split ``s3://bucket/key``. ``need_key=False`` also accepts ``s3://bucket[/]`` (listings)."""
    if scheme_of(uri) is not Scheme.s3:
        raise ValueError(f"{uri!r} is not an s3:// URI; supported: {SUPPORTED}")
    bucket, _, key = uri[len(_S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; write s3://bucket/key")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid bucket name (letters, digits, '.', '-', '_')")
    if need_key and (not key or key.endswith("/")):
        raise ValueError(f"{uri!r} names no object; write s3://{bucket}/path/to/object")
    return S3Location(bucket=bucket, key=key)


def as_local_path(uri: str) -> Path:
    """The filesystem path of a plain path or ``file:///abs/path`` URI."""
    if scheme_of(uri) is not Scheme.local:
        raise ValueError(f"{uri!r} is not a local path; supported here: plain paths or file:///abs/path")
    if not _is_file_uri(uri):
        return Path(uri)
    path = uri[len(_FILE_PREFIX) :]
    if not path.startswith("/"):
        raise ValueError(f"{uri!r}: file:// URIs need an absolute path, e.g. file:///data/run1")
    return Path(path)


def join(uri: str, *parts: str) -> str:
    """Append relative ``parts`` to a local path, ``file://`` URI or ``s3://`` URI.

    ``join("s3://b/runs", "r1", "ckpt.pt") == "s3://b/runs/r1/ckpt.pt"``. Parts may hold '/'
    (sub-paths) but must be relative: an absolute part would silently drop ``uri``.
    """
    scheme = scheme_of(uri)
    for part in parts:
        if part.startswith("/") or (scheme is Scheme.local and os.path.isabs(part)):
            raise ValueError(f"cannot join absolute part {part!r} onto {uri!r}; pass relative parts")
    if scheme is Scheme.s3:
        location = parse_s3(uri, need_key=False)
        key = posixpath.join(location.key, *parts) if parts else location.key
        return f"{_S3_PREFIX}{location.bucket}/{key}"
    if _is_file_uri(uri):
        as_local_path(uri)  # validates the absolute-path rule
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def _is_file_uri(uri: str) -> bool:
    return uri[: len(_FILE_PREFIX)].lower() == _FILE_PREFIX
