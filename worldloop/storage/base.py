"""The storage contract both backends (local filesystem, S3) fulfil, and its typed error."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Protocol, runtime_checkable


class StorageNotFoundError(FileNotFoundError):
    """No object at ``uri`` (or the bucket holding it does not exist). Same type for every backend."""

    def __init__(self, uri: str, reason: str = "no such object") -> None:
        super().__init__(errno.ENOENT, reason, uri)
        self.uri = uri


@runtime_checkable
class Storage(Protocol):
    """Object-style access to one backend. URIs are full (``/data/x``, ``file:///data/x``,
    ``s3://bucket/x``); listings return full URIs that read back as given.

    Writes are atomic for readers: an object is either absent/old or complete, never partial.
    """

    def read_bytes(self, uri: str) -> bytes:
        """The whole object; :class:`StorageNotFoundError` if absent."""
        ...

    def read_range(self, uri: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from byte ``offset`` (fewer only at the object's end);
        :class:`StorageNotFoundError` if absent. What a streaming reader uses to take one member of
        a shard without reading the shard."""
        ...

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Create or replace the object atomically (parent folders are created as needed)."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether an object (a file, not a folder) exists at ``uri``."""
        ...

    def list_uris(self, prefix_uri: str) -> list[str]:
        """Every object under the folder ``prefix_uri``, recursively, sorted; ``[]`` if none.

        ``prefix_uri`` is a folder: ``s3://b/data`` lists ``data/...``, not ``data2/...``.
        """
        ...

    def delete(self, uri: str, *, missing_ok: bool = False) -> None:
        """Remove the object; :class:`StorageNotFoundError` if absent unless ``missing_ok``."""
        ...

    def upload_file(self, local_path: str | Path, uri: str) -> None:
        """Stream a local file to ``uri`` (constant memory); atomic at the destination."""
        ...

    def download_file(self, uri: str, local_path: str | Path) -> None:
        """Stream ``uri`` into a local file; the file appears only once complete."""
        ...
