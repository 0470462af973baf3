"""S3 storage (AWS, MinIO, moto, ``rclone serve s3``) configured only from :class:`Settings`.

Readers never see partial objects: PutObject is atomic, and boto3's managed upload switches to a
multipart upload for big files, which becomes visible only when CompleteMultipartUpload succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from worldloop.settings import Settings, get_settings
from worldloop.storage.base import StorageNotFoundError
from worldloop.storage.local import atomic_local_file
from worldloop.storage.uri import parse_s3

logger = logging.getLogger(__name__)

_MISSING_OBJECT = frozenset({"404", "NoSuchKey", "NotFound"})


def make_s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for ``settings``' endpoint, region and keys (boto3's own chain if no keys).

    Path-style addressing (``endpoint/bucket/key``) because MinIO, moto and rclone serve buckets
    that way, and virtual-host style needs wildcard DNS.
    """
    access, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if (access is None) != (secret is None):
        raise ValueError(
            "set both WORLDLOOP_S3_ACCESS_KEY_ID and WORLDLOOP_S3_SECRET_ACCESS_KEY, or neither "
            "(to use boto3's credential chain)"
        )
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 5, "mode": "standard"},
    }
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        # botocore >= 1.36 adds CRC trailers to every upload by default; many S3-compatible servers
        # (older MinIO, rclone) reject them. Send checksums only where the API requires them.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    # A fresh Session per client: boto3's default session is not thread-safe to create clients from.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=access.get_secret_value() if access else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(**options),
    )


@contextmanager
def _not_found_as(uri: str) -> Iterator[None]:
    """Turn S3's missing-object/bucket errors into :class:`StorageNotFoundError` for ``uri``."""
    try:
        yield
    except (ClientError, S3UploadFailedError) as exc:
        # boto3's managed upload re-raises ClientError as S3UploadFailedError (context kept).
        cause = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
        if not isinstance(cause, ClientError):
            raise
        code = str(cause.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise StorageNotFoundError(uri, "bucket does not exist") from exc
        if code in _MISSING_OBJECT:
            raise StorageNotFoundError(uri) from exc
        raise


class S3Storage:
    """:class:`~worldloop.storage.base.Storage` over ``s3://bucket/key`` URIs (any bucket)."""

    def __init__(self, settings: Settings | None = None, *, transfer: TransferConfig | None = None) -> None:
        self.settings = settings if settings is not None else get_settings()
        self.client = make_s3_client(self.settings)
        self.transfer = transfer if transfer is not None else TransferConfig()

    def read_bytes(self, uri: str) -> bytes:
        location = parse_s3(uri)
        with _not_found_as(uri):
            response = self.client.get_object(Bucket=location.bucket, Key=location.key)
        with response["Body"] as body:
            data: bytes = body.read()
        return data

    def read_range(self, uri: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"a byte range needs offset ≥ 0 and length ≥ 0, got {offset} and {length}")
        if length == 0:
            return b""
        location = parse_s3(uri)
        with _not_found_as(uri):
            response = self.client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes={offset}-{offset + length - 1}"
            )
        with response["Body"] as body:
            data: bytes = body.read()
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        location = parse_s3(uri)
        with _not_found_as(uri):
            self.client.put_object(Bucket=location.bucket, Key=location.key, Body=data)

    def exists(self, uri: str) -> bool:
        location = parse_s3(uri)
        try:
            self.client.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_OBJECT:
                return False
            raise
        return True

    def list_uris(self, prefix_uri: str) -> list[str]:
        """As :meth:`Storage.list_uris`; a missing bucket raises :class:`StorageNotFoundError`."""
        location = parse_s3(prefix_uri, need_key=False)
        prefix = location.key if not location.key or location.key.endswith("/") else location.key + "/"
        found = []
        with _not_found_as(prefix_uri):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    # Keys ending in '/' are console "folder" markers, not objects.
                    if not item["Key"].endswith("/"):
                        found.append(f"s3://{location.bucket}/{item['Key']}")
        return sorted(found)

    def delete(self, uri: str, *, missing_ok: bool = False) -> None:
        # DeleteObject succeeds on absent keys, so ask first to honour missing_ok=False.
        if not missing_ok and not self.exists(uri):
            raise StorageNotFoundError(uri)
        location = parse_s3(uri)
        with _not_found_as(uri):
            self.client.delete_object(Bucket=location.bucket, Key=location.key)

    def upload_file(self, local_path: str | Path, uri: str) -> None:
        location = parse_s3(uri)
        source = Path(local_path)
        if not source.is_file():
            raise StorageNotFoundError(str(local_path), "no such local file to upload")
        with _not_found_as(uri):
            self.client.upload_file(str(source), location.bucket, location.key, Config=self.transfer)
        logger.debug("uploaded %s -> %s", source, uri)

    def download_file(self, uri: str, local_path: str | Path) -> None:
        location = parse_s3(uri)
        with _not_found_as(uri), atomic_local_file(local_path) as handle:
            self.client.download_fileobj(location.bucket, location.key, handle, Config=self.transfer)
        logger.debug("downloaded %s -> %s", uri, local_path)
