"""Local-filesystem storage with crash-safe writes.

Every write goes to a hidden temp file in the destination folder, is fsynced, then renamed over the
destination with ``os.replace`` (atomic on POSIX within one filesystem), so a crash mid-write leaves
the old file or none, never a partial one.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from worldloop.storage.base import StorageNotFoundError
from worldloop.storage.uri import as_local_path, join

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_COPY_CHUNK = 8 * 1024 * 1024


def is_partial(path: Path) -> bool:
    """Whether ``path`` is an in-flight temp file of :func:`atomic_local_file` (hidden from listings)."""
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


@contextmanager
def atomic_local_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path`` for writing; on clean exit fsync and rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 (not mkstemp's 0o600) so the final file gets the usual umask permissions.
    tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (the folder entry); best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomic(source: Path, destination: Path, *, source_uri: str) -> None:
    """Stream ``source`` into ``destination`` atomically; :class:`StorageNotFoundError` if no source."""
    try:
        reader = source.open("rb")
    except FileNotFoundError as exc:
        raise StorageNotFoundError(source_uri) from exc
    with reader, atomic_local_file(destination) as writer:
        shutil.copyfileobj(reader, writer, _COPY_CHUNK)


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"a byte range needs offset ≥ 0 and length ≥ 0, got {offset} and {length}")


class LocalStorage:
    """:class:`~worldloop.storage.base.Storage` over plain paths and ``file://`` URIs."""

    def read_bytes(self, uri: str) -> bytes:
        try:
            return as_local_path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StorageNotFoundError(uri) from exc

    def read_range(self, uri: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        try:
            with as_local_path(uri).open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError as exc:
            raise StorageNotFoundError(uri) from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        with atomic_local_file(as_local_path(uri)) as handle:
            handle.write(data)

    def exists(self, uri: str) -> bool:
        return as_local_path(uri).is_file()

    def list_uris(self, prefix_uri: str) -> list[str]:
        root = as_local_path(prefix_uri)
        if not root.is_dir():
            return []
        found = []
        for path in root.rglob("*"):
            if path.is_file() and not is_partial(path):
                found.append(join(prefix_uri, path.relative_to(root).as_posix()))
        return sorted(found)

    def delete(self, uri: str, *, missing_ok: bool = False) -> None:
        path = as_local_path(uri)
        if path.is_dir():
            raise ValueError(f"{uri!r} is a folder; delete the objects listed under it one by one")
        try:
            path.unlink()
        except FileNotFoundError as exc:
            if not missing_ok:
                raise StorageNotFoundError(uri) from exc

    def upload_file(self, local_path: str | Path, uri: str) -> None:
        copy_atomic(Path(local_path), as_local_path(uri), source_uri=str(local_path))
        logger.debug("copied %s -> %s", local_path, uri)

    def download_file(self, uri: str, local_path: str | Path) -> None:
        copy_atomic(as_local_path(uri), Path(local_path), source_uri=uri)
        logger.debug("copied %s -> %s", uri, local_path)
