"""Checkpoint folders on local disk and in object storage (ARCHITECTURE.md, platform layer).

A training output holds ``step-NNNNNNNN/`` checkpoints and a ``latest`` pointer (written by
:mod:`worldloop.model.train.checkpoint`). An ``s3://`` output is trained into a local mirror folder and
each checkpoint uploaded as it is written (:class:`CheckpointMirror`); readers download the latest one.
Under data parallelism every rank uploads its own optimizer shard and rank 0 the rest, so ranks on
different nodes (a Ray Train job over several pods) need no shared folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from worldloop import storage
from worldloop.data import LINEAGE_FILE
from worldloop.model.spec import SPEC_FILE
from worldloop.model.train.checkpoint import LATEST, checkpoint_name, latest_checkpoint
from worldloop.settings import Settings

# What loading a model needs from a checkpoint (never the optimizer state): the registry copies these.
CHECKPOINT_FILES = (
    "model.safetensors",
    "ema.safetensors",
    "vae.safetensors",
    SPEC_FILE,
    "state.json",
    LINEAGE_FILE,
)


class CheckpointMirror:
    """Checkpoints of an ``s3://`` output: trained into a local folder, each one uploaded as it is
    written (files first, then the ``latest`` pointer, so a reader never follows it to a partial
    upload), and the latest one downloaded before a run starts so the run resumes from it."""

    def __init__(self, uri: str, *, settings: Settings) -> None:
        self.uri, self.settings = uri.rstrip("/"), settings
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = (settings.home / "checkpoint-cache" / digest).resolve()

    def pull(self, into: Path | None = None) -> Path:
        """Download the latest checkpoint (if any) into ``into`` (default: the mirror folder)."""
        local = into or self.local
        local.mkdir(parents=True, exist_ok=True)
        pointer = storage.join(self.uri, LATEST)
        if storage.exists(pointer, settings=self.settings):
            name = storage.read_bytes(pointer, settings=self.settings).decode().strip()
            for uri in storage.list_uris(storage.join(self.uri, name), settings=self.settings):
                target = local / name / uri.rsplit("/", 1)[1]
                storage.download_file(uri, target, settings=self.settings)
            # atomically: ranks of one node may pull into the same folder at once (a Ray Train job)
            with storage.atomic_local_file(local / LATEST) as handle:
                handle.write((name + "\n").encode())
        return local

    def push_shards(self, step: int, files: list[Path]) -> None:
        """Upload one rank's optimizer shards of checkpoint ``step`` into its folder, before rank 0
        publishes it (:meth:`push` moves ``latest`` last): ranks on other nodes share no folder with
        rank 0, so the checkpoint is assembled here."""
        for path in files:
            target = storage.join(self.uri, checkpoint_name(step), path.name)
            storage.upload_file(path, target, settings=self.settings)

    def push(self, folder: Path) -> None:
        """Upload checkpoint ``folder`` (a ``step-…`` folder of the local mirror), then move ``latest``."""
        for path in sorted(folder.iterdir()):
            storage.upload_file(path, storage.join(self.uri, folder.name, path.name), settings=self.settings)
        storage.write_bytes(
            storage.join(self.uri, LATEST), (folder.name + "\n").encode(), settings=self.settings
        )


def training_folder(
    uri: str | Path, *, settings: Settings, pull: bool
) -> tuple[Path, CheckpointMirror | None]:
    """The local folder a training output ``uri`` is trained into, and its mirror when ``uri`` is remote
    (``pull``: download the latest checkpoint first, so a run resumes from it)."""
    if isinstance(uri, Path) or storage.scheme_of(uri) is storage.Scheme.local:
        return storage.as_local_path(str(uri)), None
    mirror = CheckpointMirror(uri, settings=settings)
    return (mirror.pull() if pull else mirror.local), mirror


def checkpoint_folder(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the latest checkpoint under it."""
    weights = (path / "model.safetensors").is_file() or (path / "vae.safetensors").is_file()
    if weights and (path / "state.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: not a checkpoint and no 'latest' checkpoint under it")
    return found


def local_checkpoint(uri: str | Path, *, settings: Settings) -> Path:
    """The checkpoint ``uri`` names (a checkpoint folder, or a training output whose latest checkpoint is
    meant; local or ``s3://``) as a local folder, downloaded when remote."""
    text = str(uri)
    if storage.scheme_of(text) is not storage.Scheme.local:
        return checkpoint_folder(CheckpointMirror(text, settings=settings).pull())
    local = storage.as_local_path(text)
    if not local.exists():
        raise FileNotFoundError(f"{text}: no such checkpoint folder")
    return checkpoint_folder(local)
