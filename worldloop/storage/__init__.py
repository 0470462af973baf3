"""Storage for local paths and ``s3://bucket/key`` URIs, with atomic writes (DESIGN.md §2).

    from worldloop import storage
    storage.write_bytes(storage.join(root, "manifest.json"), data)
    storage.list_uris("s3://datasets/synthworld")  # full URIs, recursive, sorted

S3 endpoint, region and keys come from :class:`worldloop.settings.Settings` (pass ``settings=`` or
rely on :func:`worldloop.settings.get_settings`); nothing here reads the environment.
"""

from worldloop.storage.base import Storage, StorageNotFoundError
from worldloop.storage.dispatch import (
    delete,
    download_file,
    exists,
    list_uris,
    open_storage,
    read_bytes,
    read_range,
    storage_uri,
    upload_file,
    write_bytes,
)
from worldloop.storage.local import LocalStorage, atomic_local_file
from worldloop.storage.s3 import S3Storage, make_s3_client
from worldloop.storage.uri import S3Location, Scheme, as_local_path, join, parse_s3, scheme_of

__all__ = [
    "LocalStorage",
    "S3Location",
    "S3Storage",
    "Scheme",
    "Storage",
    "StorageNotFoundError",
    "as_local_path",
    "atomic_local_file",
    "delete",
    "download_file",
    "exists",
    "join",
    "list_uris",
    "make_s3_client",
    "open_storage",
    "parse_s3",
    "read_bytes",
    "read_range",
    "scheme_of",
    "storage_uri",
    "upload_file",
    "write_bytes",
]
