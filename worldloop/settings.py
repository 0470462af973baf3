"""Where things live: one pydantic-settings object, read from ``WORLDLOOP_*`` variables (DESIGN.md §2).

Nothing else in the project reads environment variables for platform settings; code asks
:func:`get_settings` (or takes a :class:`Settings` argument in tests).
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Mapping
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# What "beats the baselines" means by default: the first blocks look more like the truth than either
# baseline, and the keys move the camera the right way (the quality ladder). Not the camera rotation
# error: at 64 px the estimator's own error on the true clips (1.5 deg) exceeds a frozen video's (0.5),
# so that metric cannot tell a model that follows the camera from one that stands still.
DEFAULT_BASELINE_METRICS = ("rollout.psnr.blocks_1_2", "direction.all")
DEMO_APPROVER = "demo@local"  # the local profile's approver, so the demo can approve its own candidate
MIN_SIGNING_KEY_BYTES = 32  # HMAC-SHA256: a key shorter than the hash weakens it (RFC 2104 §3)


class Profile(str, Enum):
    """``local`` runs everything embedded on one machine; ``cluster`` talks to Kubernetes services."""

    local = "local"
    cluster = "cluster"


class Settings(BaseSettings):
    """Platform settings. Every field can be set as ``WORLDLOOP_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="WORLDLOOP_", extra="forbid", frozen=True)

    profile: Profile = Field(Profile.local, description="local (embedded defaults) or cluster.")
    home: Path = Field(Path(".worldloop"), description="Working directory for local state.")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; local profile default: sqlite under home."
    )
    storage_root: str | None = Field(
        None, description="Root for datasets/checkpoints: a path or s3://bucket/prefix."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, local test servers).")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key (or boto3's chain).")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    kfp_host: str | None = Field(None, description="Kubeflow Pipelines API URL (cluster profile).")
    pipeline_cluster_config: Path | None = Field(
        None,
        description=(
            "YAML of the pipelines' cluster settings (image, GPUs, tolerations, node selector, PVC, secret "
            "names, retries; worldloop.pipelines.cluster.ClusterConfig). Default: its defaults."
        ),
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to run curation on (ray://host:10001); None starts a local Ray."
    )
    t5_path: Path | None = Field(
        None,
        description=(
            "Local umT5/T5 folder (config.json, safetensors, tokenizer) the small and a14b presets train "
            "with; default: the bundled MiniLM behind a learned projection (offline)."
        ),
    )
    data_cache_mb: int = Field(
        1024,
        ge=0,
        description=(
            "Decoded training clips a training process keeps in memory, per dataset (MiB); the rest "
            "is read from the shards again when needed, so memory does not grow with the data. 1 GiB "
            "holds 200 SynthWorld clips of 33 frames at 128 px (400 of them thrashed 256 MiB)."
        ),
    )
    registered_model: str = Field(
        "worldloop", description="MLflow registered model that versions, candidate and champion belong to."
    )
    approvers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description=(
            "Local profile: identities allowed to approve, promote and roll back model versions, "
            f"comma-separated or a JSON list. Default: ['{DEMO_APPROVER}']. On a cluster approvers are the "
            "Kubernetes group worldloop-approvers and this must stay unset."
        ),
    )
    identity: str | None = Field(
        None,
        description=(
            "Local profile: who is acting in registry decisions (recorded in the audit tags; asserted, not "
            "authenticated). Default: USER@HOST of this process. On a cluster the acting identity is the "
            "caller's Kubernetes user and this must stay unset."
        ),
    )
    signing_key: SecretStr | None = Field(
        None,
        description=(
            "HMAC-SHA256 key (at least 32 bytes) that signs approvals and promotions and that serving "
            "verifies the champion with; on a cluster from the Secret worldloop-signing-key. Default: the "
            "key in signing_key_file."
        ),
    )
    signing_key_file: Path | None = Field(
        None,
        description=(
            "File holding the signing key (a mounted Secret). Default: locally HOME/signing.key, generated "
            "on first use; on a cluster none — the CLI reads the Secret signing_secret as its caller."
        ),
    )
    signing_secret: str = Field(
        "worldloop/worldloop-signing-key",
        description=(
            "NAMESPACE/NAME of the Secret (data key 'key') that holds the signing key on a cluster; the "
            "CLI reads it with the caller's Kubernetes credentials when no key is set otherwise."
        ),
    )
    kubeconfig: Path | None = Field(
        None,
        description=(
            "Cluster profile: the kubeconfig registry decisions and a training step's RayJob authenticate "
            "with (its current context). Default: ~/.kube/config, else the pod's service account."
        ),
    )
    gate_tolerance: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description=(
            "InterBench promotion gate: how far below the champion any one dimension of a candidate may "
            "score (scores are in [0, 1]) before its promotion is refused."
        ),
    )

    gate_floors: Annotated[tuple[tuple[str, float], ...], NoDecode] = Field(
        (),
        description=(
            "Absolute floors of the promotion gate, a JSON object: an InterBench dimension "
            '("trigger") or a quality-ladder metric ("rollout.psnr.blocks_1_2") → its minimum; for the '
            'lower-is-better camera errors ("camera.rotation_deg") the value is a maximum.'
        ),
    )
    gate_baseline_metrics: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_BASELINE_METRICS,
        description=(
            "Quality-ladder metrics on which a candidate must beat both baselines (random weights of its "
            "spec, the frozen first frame) to be promoted: comma-separated or a JSON list; empty turns "
            "the rule off."
        ),
    )

    serve_api_keys: Annotated[list[SecretStr] | None, NoDecode] = Field(
        None,
        description=(
            "API keys the serving API accepts (comma-separated or a JSON list); None: no authentication "
            "(local use). Clients send `Authorization: Bearer KEY`, `X-API-Key: KEY` or `?api_key=KEY`."
        ),
    )
    serve_sessions_per_key: int = Field(4, ge=1, description="Open sessions one API key may hold.")
    serve_max_sessions: int = Field(64, ge=1, description="Open sessions the serving API holds in all.")
    serve_max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest HTTP request body (images, inference tensors)."
    )
    serve_max_message_bytes: int = Field(
        64 * 1024, ge=256, description="Largest WebSocket message a client may send."
    )
    serve_session_idle_s: float = Field(
        600.0, gt=0, description="Seconds without a step after which a session is closed."
    )
    serve_model_poll_s: float = Field(
        30.0, gt=0, description="How often a generator serving models:/NAME@ALIAS checks for a new version."
    )
    serve_resume_timeout_s: float = Field(
        120.0, gt=0, description="How long a session waits for a restarted generator to rebuild it."
    )
    serve_session_db: SecretStr | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the database that keeps session records, so that sessions outlive the "
            "ingress replica: locally default sqlite under home; on a cluster required by the ingress, "
            "e.g. postgresql+psycopg2://USER:PASSWORD@postgres:5432/DB (a secret: it holds the password)."
        ),
    )

    @field_validator("mlflow_uri", "kfp_host", "s3_endpoint_url", "ray_address")
    @classmethod
    def _no_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; unset the variable to use the default")
        return value

    @field_validator("serve_session_db")
    @classmethod
    def _session_db(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be blank; unset the variable to use the default")
        return value

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        # The name is part of models:/NAME@ALIAS and models:/NAME/VERSION URIs.
        if not value.strip() or any(c in value for c in "/@:'\"") or value != value.strip():
            raise ValueError(f"{value!r} is not a registered model name (non-blank; no / @ : or quotes)")
        return value

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError(
                "must be a non-blank identity without surrounding spaces (e.g. alice@example.com)"
            )
        return value

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip().encode()) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"a signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes (e.g. openssl rand -hex 32)"
            )
        return value

    @field_validator("signing_secret")
    @classmethod
    def _secret_ref(cls, value: str) -> str:
        namespace, sep, name = value.partition("/")
        if not sep or not namespace or not name or "/" in name or value != value.strip():
            raise ValueError(
                f"{value!r}: expected NAMESPACE/NAME of a Secret (e.g. worldloop/worldloop-signing-key)"
            )
        return value

    @field_validator("gate_floors", mode="before")
    @classmethod
    def _floors(cls, value: object) -> object:
        # a JSON object (environment) or a mapping → sorted (metric, floor) pairs: settings stay hashable
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), float(v)) for k, v in value.items()))
        return value

    @field_validator("gate_baseline_metrics", mode="before")
    @classmethod
    def _metric_list(cls, value: object) -> object:
        if isinstance(value, str):  # a JSON list or comma-separated names; empty: the rule is off
            text = value.strip()
            return (
                json.loads(text)
                if text.startswith("[")
                else [p.strip() for p in text.split(",") if p.strip()]
            )
        return value

    @field_validator("approvers", "serve_api_keys", mode="before")
    @classmethod
    def _approver_list(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: a JSON list or comma-separated identities
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",")]
        return value

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not a.strip() or a != a.strip() for a in value):
            raise ValueError(
                f"{value!r}: every approver must be a non-blank identity without spaces around it"
            )
        return value

    @field_validator("serve_api_keys")
    @classmethod
    def _api_keys(cls, value: list[SecretStr] | None) -> list[SecretStr] | None:
        if value is not None:
            weak = [i for i, k in enumerate(value) if len(k.get_secret_value().strip()) < 16]
            if weak:
                raise ValueError(f"API keys must be at least 16 characters (entries {weak} are not)")
        return value

    @model_validator(mode="after")
    def _one_signing_key(self) -> Settings:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError("set WORLDLOOP_SIGNING_KEY or WORLDLOOP_SIGNING_KEY_FILE, not both")
        return self

    @model_validator(mode="after")
    def _cluster_needs_services(self) -> Settings:
        if self.profile is Profile.cluster:
            required = {"mlflow_uri": self.mlflow_uri, "storage_root": self.storage_root}
            missing = [name for name, value in required.items() if value is None]
            if missing:
                names = ", ".join(f"WORLDLOOP_{n.upper()}" for n in missing)
                raise ValueError(f"profile 'cluster' needs {names} (no embedded defaults on a cluster)")
        return self

    @property
    def resolved_mlflow_uri(self) -> str:
        """The tracking URI in use: explicit, else MLflow on sqlite under ``home``."""
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def resolved_session_db(self) -> str:
        """The session database URL: explicit, else sqlite under ``home`` (local profile only)."""
        if self.serve_session_db is not None:
            return self.serve_session_db.get_secret_value().strip()
        if self.profile is Profile.cluster:
            raise ValueError(
                "profile 'cluster' needs WORLDLOOP_SERVE_SESSION_DB for the serving ingress (sessions are "
                "kept in the platform's Postgres; no embedded default on a cluster)"
            )
        return f"sqlite:///{(self.home / 'sessions.db').resolve()}"

    @property
    def resolved_storage_root(self) -> str:
        """Where artifacts go: explicit, else ``home/store``."""
        return self.storage_root or str((self.home / "store").resolve())

    @property
    def resolved_approvers(self) -> tuple[str, ...]:
        """Who may approve by name: explicit, else the demo approver locally and nobody on a cluster
        (where approvers are the Kubernetes group ``worldloop-approvers``, not names)."""
        if self.approvers is not None:
            return tuple(self.approvers)
        return (DEMO_APPROVER,) if self.profile is Profile.local else ()

    @property
    def resolved_identity(self) -> str:
        """Who is acting: explicit, else ``USER@HOST`` of this process."""
        if self.identity:
            return self.identity
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no login name and no passwd entry (some containers)
            user = "unknown"
        return f"{user}@{socket.gethostname()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build :class:`Settings` directly instead."""
    return Settings()
