"""Reading registered model versions (ARCHITECTURE.md, platform layer): the MLflow client of the
settings, a ``models:/`` URI → the version it names now, and that version's checkpoint on local disk.

``models:/NAME@champion`` resolves only to a version whose signed promotion chain verifies
(:mod:`worldloop.platform.signing`): an alias moved outside the promotion gate is refused here, for
every loader at once.

Writing the registry (registration, approvals, promotion, rollback) is a pipeline step:
:mod:`worldloop.components.registry`. Loaders — evaluation, serving, ``load_model_stack`` — read here.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worldloop.platform.checkpoints import CHECKPOINT_FILES
from worldloop.platform.signing import UnverifiedChampion, verification_key, verify_champion
from worldloop.platform.uri import ModelKind, ModelURI
from worldloop.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHECKPOINT_ARTIFACTS = "checkpoint"  # the registration run's artifact folder holding the weights
CHAMPION = "champion"  # the alias serving follows; only the promotion gate may move it


def registry_client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking store, which also holds the registry."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_exists(mlflow: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def lookup_version(mlflow: MlflowClient, name: str, ref: int | str, settings: Settings) -> ModelVersion:
    """Version ``ref`` (a number, or an alias such as ``champion``) of ``name``; ValueError when absent."""
    from mlflow.exceptions import MlflowException

    if not model_exists(mlflow, name):
        raise ValueError(
            f"no registered model {name!r} in {settings.resolved_mlflow_uri}: register a version first "
            "(a pipeline run does; or worldloop.components.registry.register_version)"
        )
    text = str(ref).strip()
    try:
        if text.isdigit():
            return mlflow.get_model_version(name, text)
        return mlflow.get_model_version_by_alias(name, text)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"version {text}" if text.isdigit() else f"alias {text!r}"
        raise ValueError(f"{name}: no {what} (see 'worldloop models list')") from err


@dataclass(frozen=True)
class PinnedVersion:
    """The version a registry URI named when it was resolved."""

    name: str
    version: int
    run_id: str | None  # the registration run: its artifacts hold the checkpoint

    @property
    def uri(self) -> ModelURI:
        return ModelURI.registry(self.name, version=self.version)


def pin_version(uri: ModelURI, *, settings: Settings) -> PinnedVersion:
    """The version ``uri`` (``models:/NAME@ALIAS`` or ``/VERSION``) names now; for ``@champion`` only
    when its signed promotion chain verifies (else :class:`UnverifiedChampion`)."""
    if uri.kind is not ModelKind.registry or uri.name is None:
        raise ValueError(f"{uri}: not a registry URI (models:/NAME@ALIAS or models:/NAME/VERSION)")
    mlflow = registry_client(settings)
    mv = lookup_version(mlflow, uri.name, uri.ref, settings)
    if uri.alias == CHAMPION:
        key = verification_key(settings)
        verify_champion(mlflow.get_registered_model(uri.name).tags, mv, key)
    return PinnedVersion(uri.name, int(mv.version), mv.run_id or None)


def download_version(pinned: PinnedVersion, *, settings: Settings) -> Path:
    """The checkpoint files of ``pinned`` as a local folder, cached under ``home`` per registration run
    (a version's files never change); downloaded whole into a temporary folder, then renamed."""
    if pinned.run_id is None:
        raise ValueError(f"{pinned.uri} has no registration run: not registered by worldloop")
    root = (settings.home / "registry-cache").resolve()
    final = root / pinned.run_id
    if all((final / f).is_file() for f in ("model.safetensors", "state.json")):
        return final
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{pinned.run_id}.partial-{uuid.uuid4().hex[:8]}"
    try:
        mlflow = registry_client(settings)
        downloaded = mlflow.download_artifacts(pinned.run_id, CHECKPOINT_ARTIFACTS, str(partial))
        shutil.rmtree(final, ignore_errors=True)
        Path(downloaded).rename(final)  # whole, or not at all
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


__all__ = [
    "CHAMPION",
    "CHECKPOINT_ARTIFACTS",
    "CHECKPOINT_FILES",
    "PinnedVersion",
    "UnverifiedChampion",
    "download_version",
    "lookup_version",
    "model_exists",
    "pin_version",
    "registry_client",
]
