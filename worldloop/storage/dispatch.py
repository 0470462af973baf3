"""Pick the backend from a URI's scheme, and one-call helpers that do so.

S3 backends are cached per :class:`Settings` (Settings is frozen, hence hashable), so the helpers
reuse one boto3 client instead of building one per call.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from worldloop.settings import Settings, get_settings
from worldloop.storage.base import Storage
from worldloop.storage.local import LocalStorage
from worldloop.storage.s3 import S3Storage
from worldloop.storage.uri import Scheme, join, scheme_of

_LOCAL = LocalStorage()


@lru_cache(maxsize=8)
def _s3_storage(settings: Settings) -> S3Storage:
    return S3Storage(settings)


def open_storage(uri: str, *, settings: Settings | None = None) -> Storage:
    """The backend for ``uri``: local for paths and ``file://``, S3 (configured from ``settings``,
    default :func:`get_settings`) for ``s3://``. ValueError for other schemes."""
    if scheme_of(uri) is Scheme.local:
        return _LOCAL
    return _s3_storage(settings if settings is not None else get_settings())


def storage_uri(*parts: str, settings: Settings | None = None) -> str:
    """``parts`` joined under the configured storage root (a path or ``s3://bucket/prefix``)."""
    root = (settings if settings is not None else get_settings()).resolved_storage_root
    return join(root, *parts)


def read_bytes(uri: str, *, settings: Settings | None = None) -> bytes:
    """The whole object at ``uri``; :class:`StorageNotFoundError` if absent."""
    return open_storage(uri, settings=settings).read_bytes(uri)


def read_range(uri: str, offset: int, length: int, *, settings: Settings | None = None) -> bytes:
    """``length`` bytes of the object at ``uri`` from byte ``offset``."""
    return open_storage(uri, settings=settings).read_range(uri, offset, length)


def write_bytes(uri: str, data: bytes, *, settings: Settings | None = None) -> None:
    """Create or replace the object at ``uri`` atomically."""
    open_storage(uri, settings=settings).write_bytes(uri, data)


def exists(uri: str, *, settings: Settings | None = None) -> bool:
    """Whether an object exists at ``uri``."""
    return open_storage(uri, settings=settings).exists(uri)


def list_uris(prefix_uri: str, *, settings: Settings | None = None) -> list[str]:
    """Every object under the folder ``prefix_uri``, recursively, sorted, as full URIs."""
    return open_storage(prefix_uri, settings=settings).list_uris(prefix_uri)


def delete(uri: str, *, missing_ok: bool = False, settings: Settings | None = None) -> None:
    """Remove the object at ``uri``; :class:`StorageNotFoundError` if absent unless ``missing_ok``."""
    open_storage(uri, settings=settings).delete(uri, missing_ok=missing_ok)


def upload_file(local_path: str | Path, uri: str, *, settings: Settings | None = None) -> None:
    """Stream a local file to ``uri``; the object appears only once complete."""
    open_storage(uri, settings=settings).upload_file(local_path, uri)


def download_file(uri: str, local_path: str | Path, *, settings: Settings | None = None) -> None:
    """Stream ``uri`` into ``local_path``; the file appears only once complete."""
    open_storage(uri, settings=settings).download_file(uri, local_path)
