import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from pydantic import SecretStr

from worldloop import storage
from worldloop.settings import Settings
from worldloop.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageNotFoundError,
    atomic_local_file,
    join,
    open_storage,
)
from worldloop.storage import local as local_module

S3_BUCKET = "worldloop-test"  # created by the s3_endpoint fixture (conftest.py)


@dataclass
class Backend:
    store: Storage
    root: str  # an empty folder on this backend


@pytest.fixture(params=["path", "file-uri", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "path":
        return Backend(LocalStorage(), str(tmp_path / "root"))
    if request.param == "file-uri":
        return Backend(LocalStorage(), f"file://{tmp_path / 'root'}")
    settings = request.getfixturevalue("s3_settings")
    return Backend(S3Storage(settings), f"s3://{S3_BUCKET}/{uuid.uuid4().hex}")


# -- behaviour shared by every backend -------------------------------------------------------------


def test_write_read_exists_delete(backend: Backend) -> None:
    uri = join(backend.root, "a", "b.bin")
    assert not backend.store.exists(uri)
    backend.store.write_bytes(uri, b"\x00first")
    backend.store.write_bytes(uri, b"second")  # replaces
    assert backend.store.exists(uri) and backend.store.read_bytes(uri) == b"second"
    backend.store.delete(uri)
    assert not backend.store.exists(uri)
    assert not backend.store.exists(join(backend.root, "a"))  # a folder is not an object


def test_read_range_returns_the_bytes_asked_for(backend: Backend) -> None:
    uri = join(backend.root, "shard.tar")
    data = bytes(range(256)) * 40
    backend.store.write_bytes(uri, data)
    assert backend.store.read_range(uri, 0, 10) == data[:10]
    assert backend.store.read_range(uri, 1000, 300) == data[1000:1300]
    assert backend.store.read_range(uri, len(data) - 5, 100) == data[-5:]  # short only at the end
    assert backend.store.read_range(uri, 7, 0) == b""
    with pytest.raises(ValueError, match="offset"):
        backend.store.read_range(uri, -1, 3)
    with pytest.raises(StorageNotFoundError):
        backend.store.read_range(join(backend.root, "absent.tar"), 0, 3)


def test_list_is_recursive_sorted_and_scoped_to_the_folder(backend: Backend) -> None:
    names = ["z.txt", "a/2.txt", "a/1.txt", "a.txt", "a/deep/x.txt"]
    for name in names:
        backend.store.write_bytes(join(backend.root, "data", name), name.encode())
    backend.store.write_bytes(join(backend.root, "data2", "other.txt"), b"not under data/")

    listed = backend.store.list_uris(join(backend.root, "data"))
    assert listed == sorted(join(backend.root, "data", n) for n in names)
    assert [backend.store.read_bytes(uri) for uri in listed] == [n.encode() for n in sorted(names)]
    assert backend.store.list_uris(join(backend.root, "data") + "/") == listed
    assert backend.store.list_uris(join(backend.root, "nothing-here")) == []


def test_missing_objects_raise_a_typed_not_found(backend: Backend, tmp_path: Path) -> None:
    missing = join(backend.root, "missing.bin")
    with pytest.raises(StorageNotFoundError) as caught:
        backend.store.read_bytes(missing)
    assert caught.value.uri == missing and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(StorageNotFoundError):
        backend.store.delete(missing)
    backend.store.delete(missing, missing_ok=True)
    with pytest.raises(StorageNotFoundError):
        backend.store.download_file(missing, tmp_path / "out" / "missing.bin")
    assert not (tmp_path / "out" / "missing.bin").exists()
    with pytest.raises(StorageNotFoundError):
        backend.store.upload_file(tmp_path / "no-such-file", join(backend.root, "x"))
    assert not backend.store.exists(join(backend.root, "x"))


def test_upload_download_round_trip(backend: Backend, tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "src.bin"
    source.write_bytes(payload)
    uri = join(backend.root, "blobs", "big.bin")
    backend.store.upload_file(source, uri)
    destination = tmp_path / "nested" / "dst.bin"
    backend.store.download_file(uri, destination)
    assert destination.read_bytes() == payload
    assert sorted(p.name for p in destination.parent.iterdir()) == ["dst.bin"]  # no temp files


def test_malformed_uris_are_rejected_with_the_supported_schemes(backend: Backend) -> None:
    for bad in ["gs://bucket/key", "", "s3://", "s3:///key"]:
        with pytest.raises(ValueError, match="s3://"):
            backend.store.read_bytes(bad)


# -- URIs and dispatch -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b", ("k",), "s3://b/k"),
        ("s3://b/", ("runs", "r1/ckpt.pt"), "s3://b/runs/r1/ckpt.pt"),
        ("s3://b/runs/", ("x",), "s3://b/runs/x"),
        ("/data", ("a", "b.txt"), "/data/a/b.txt"),
        ("rel/dir", ("f",), "rel/dir/f"),
        ("file:///data/", ("a",), "file:///data/a"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


def test_join_rejects_absolute_parts_and_bad_bases() -> None:
    with pytest.raises(ValueError, match="relative"):
        join("s3://b/k", "/etc")
    with pytest.raises(ValueError, match="relative"):
        join("/data", "/etc/passwd")
    with pytest.raises(ValueError, match="gs"):
        join("gs://b", "k")
    with pytest.raises(ValueError, match="absolute path"):
        join("file://relative/path", "k")


def test_s3_uris_need_bucket_and_key(s3_settings: Settings) -> None:
    store = S3Storage(s3_settings)
    with pytest.raises(ValueError, match="names no bucket"):
        store.write_bytes("s3:///k", b"")
    with pytest.raises(ValueError, match="names no object"):
        store.write_bytes(f"s3://{S3_BUCKET}", b"")
    with pytest.raises(ValueError, match="names no object"):
        store.read_bytes(f"s3://{S3_BUCKET}/folder/")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.read_bytes("/local/path")
    with pytest.raises(ValueError, match="not a local path"):
        LocalStorage().read_bytes(f"s3://{S3_BUCKET}/k")


def test_missing_bucket_is_not_found(s3_settings: Settings, tmp_path: Path) -> None:
    store = S3Storage(s3_settings)
    with pytest.raises(StorageNotFoundError, match="bucket does not exist"):
        store.list_uris("s3://no-such-bucket-here/prefix")
    with pytest.raises(StorageNotFoundError, match="bucket does not exist"):
        store.write_bytes("s3://no-such-bucket-here/key", b"x")
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(StorageNotFoundError, match="bucket does not exist"):
        store.upload_file(tmp_path / "f.bin", "s3://no-such-bucket-here/key")
    with pytest.raises(StorageNotFoundError):
        store.read_bytes("s3://no-such-bucket-here/key")


def test_open_storage_dispatches_on_scheme(tmp_path: Path, s3_settings: Settings) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    s3 = open_storage(f"s3://{S3_BUCKET}/k", settings=s3_settings)
    assert isinstance(s3, S3Storage) and s3.settings == s3_settings  # cached per equal settings
    assert open_storage(f"s3://{S3_BUCKET}/other", settings=s3_settings) is s3  # one client reused
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        open_storage("gs://bucket/key")


def test_module_helpers_and_storage_root(s3_settings: Settings) -> None:
    settings = s3_settings.model_copy(update={"storage_root": f"s3://{S3_BUCKET}/root-{uuid.uuid4().hex}"})
    uri = storage.storage_uri("runs", "r1.json", settings=settings)
    assert uri == f"{settings.storage_root}/runs/r1.json"
    storage.write_bytes(uri, b"{}", settings=settings)
    assert storage.exists(uri, settings=settings)
    assert storage.read_bytes(uri, settings=settings) == b"{}"
    assert storage.list_uris(storage.storage_uri(settings=settings), settings=settings) == [uri]
    storage.delete(uri, settings=settings)
    assert not storage.exists(uri, settings=settings)


def test_storage_root_defaults_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, storage_root=None)
    assert storage.storage_uri("a", settings=settings) == str((tmp_path / "store" / "a").resolve())


# -- S3 settings ------------------------------------------------------------------------------------


def test_s3_uses_the_settings_endpoint_not_the_environment(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # boto3 would honour these if storage let it; settings must win.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = S3Storage(s3_settings)
    assert store.client.meta.endpoint_url == s3_settings.s3_endpoint_url
    assert store.client.meta.region_name == "us-east-1"
    uri = f"s3://{S3_BUCKET}/endpoint-check/{uuid.uuid4().hex}"
    store.write_bytes(uri, b"via settings")

    independent = boto3.client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    key = uri.removeprefix(f"s3://{S3_BUCKET}/")
    assert independent.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read() == b"via settings"


def test_half_configured_credentials_are_rejected(s3_endpoint: str) -> None:
    settings = Settings(s3_endpoint_url=s3_endpoint, s3_access_key_id=SecretStr("only-the-id"))
    with pytest.raises(ValueError, match="WORLDLOOP_S3_SECRET_ACCESS_KEY"):
        S3Storage(settings)


def test_s3_multipart_upload_round_trips(s3_settings: Settings, tmp_path: Path) -> None:
    # 5 MiB is S3's minimum part size; 11 MiB with 5 MiB parts forces a 3-part upload.
    transfer = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    store = S3Storage(s3_settings, transfer=transfer)
    payload = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(payload)
    uri = f"s3://{S3_BUCKET}/multipart/{uuid.uuid4().hex}.bin"
    store.upload_file(tmp_path / "big.bin", uri)
    key = uri.removeprefix(f"s3://{S3_BUCKET}/")
    etag = store.client.head_object(Bucket=S3_BUCKET, Key=key)["ETag"]
    assert etag.strip('"').endswith("-3")  # multipart ETags end in -<number of parts>
    store.download_file(uri, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload


# -- atomicity --------------------------------------------------------------------------------------


def _only_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_local_file_leaves_nothing_partial_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_local_file(target) as handle:
        handle.write(b"half of the new con")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert _only_entries(tmp_path) == ["out.bin"]
    with pytest.raises(RuntimeError), atomic_local_file(tmp_path / "fresh.bin") as handle:
        handle.write(b"partial")
        raise RuntimeError("crash")
    assert _only_entries(tmp_path) == ["out.bin"]


def test_local_write_failing_before_commit_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "manifest.json"
    LocalStorage().write_bytes(str(target), b"v1")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    # The new bytes are written to the temp file; the failure hits before the rename.
    monkeypatch.setattr(local_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        LocalStorage().write_bytes(str(target), b"v2 that never lands")
    assert target.read_bytes() == b"v1"
    assert _only_entries(tmp_path) == ["manifest.json"]


def test_local_copy_failing_midway_leaves_no_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 1000)

    def copy_half_then_fail(reader: object, writer: object, length: int = 0) -> None:
        writer.write(reader.read(500))  # type: ignore[attr-defined]
        raise ConnectionResetError("source vanished")

    monkeypatch.setattr(local_module.shutil, "copyfileobj", copy_half_then_fail)
    out = tmp_path / "out"
    with pytest.raises(ConnectionResetError):
        LocalStorage().upload_file(source, str(out / "dst.bin"))
    with pytest.raises(ConnectionResetError):
        LocalStorage().download_file(str(source), out / "dst2.bin")
    assert _only_entries(out) == []


def test_s3_download_failing_midway_leaves_no_destination(
    s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Storage(s3_settings)
    uri = f"s3://{S3_BUCKET}/atomic/{uuid.uuid4().hex}"
    store.write_bytes(uri, b"y" * 1000)
    destination = tmp_path / "dst.bin"
    destination.write_bytes(b"old")

    def download_half_then_fail(bucket: str, key: str, handle: object, **kwargs: object) -> None:
        handle.write(b"y" * 500)  # type: ignore[attr-defined]
        raise ConnectionResetError("connection dropped")

    monkeypatch.setattr(store.client, "download_fileobj", download_half_then_fail)
    with pytest.raises(ConnectionResetError):
        store.download_file(uri, destination)
    assert destination.read_bytes() == b"old"
    assert _only_entries(tmp_path) == ["dst.bin"]


def test_local_listing_hides_in_flight_temp_files(tmp_path: Path) -> None:
    store = LocalStorage()
    store.write_bytes(str(tmp_path / "done.bin"), b"ok")
    with atomic_local_file(tmp_path / "writing.bin") as handle:
        handle.write(b"in flight")
        assert store.list_uris(str(tmp_path)) == [str(tmp_path / "done.bin")]
    assert store.list_uris(str(tmp_path)) == [str(tmp_path / "done.bin"), str(tmp_path / "writing.bin")]
