"""Approvals nobody can forge (real MLflow on sqlite): decisions are signed with HMAC-SHA256 and checked
along the chain approval → promotion → champion; on the cluster profile the caller is their Kubernetes
user, asked of an API server (``tests/fake_kube.py``) with a SelfSubjectReview, and approvers are the
group ``worldloop-approvers``."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_kube import SELF_SUBJECT_REVIEWS, FakeKube, User, write_user_kubeconfig
from mlflow import MlflowClient
from pydantic import SecretStr
from safetensors.torch import save_file

from worldloop.cli.main import run
from worldloop.components.registry import Refused, approve, promote, register_version, rollback, show
from worldloop.platform.registry import pin_version
from worldloop.platform.signing import (
    APPROVAL_RECORD,
    CHAMPION_RECORD,
    PROMOTION_RECORD,
    ApprovalRecord,
    ChampionRecord,
    PromotionRecord,
    UnverifiedChampion,
    read_record,
)
from worldloop.platform.uri import ModelURI
from worldloop.settings import Settings, get_settings

DIMS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")
ALICE, MALLORY = "alice@example.com", "mallory@example.com"
KEY = "9f" * 32  # the Secret's key on the cluster
OTHER_KEY = SecretStr("a different key, at least thirty-two bytes long")
CHAMPION_URI = ModelURI.parse("models:/worldloop@champion")


def _register(root: Path, settings: Settings, physics: float = 0.5) -> int:
    folder = root / "step-00000001"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "state.json").write_text(json.dumps({"config": {"model_preset": "tiny"}}))
    scores = {"interbench": {d: physics if d == "physics" else 0.5 for d in DIMS}}
    return register_version(folder, scores=scores, settings=settings).version


def _mlflow(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)


def _version_tags(settings: Settings, version: int) -> dict[str, str]:
    return dict(_mlflow(settings).get_model_version("worldloop", str(version)).tags)


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", approvers=[ALICE], identity=ALICE, gate_baseline_metrics=())


def test_local_decisions_are_signed_with_a_generated_key(tmp_path: Path, local: Settings) -> None:
    version = _register(tmp_path / "a", local)
    approve(version, reason="report reviewed", settings=local)
    promote(version, settings=local)

    key_file = local.home / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # generated on first use, owner only
    key = key_file.read_bytes().strip()
    assert len(key) >= 32
    tags = _version_tags(local, version)
    approval = read_record(ApprovalRecord, tags[APPROVAL_RECORD])
    promotion = read_record(PromotionRecord, tags[PROMOTION_RECORD])
    champion_tags = _mlflow(local).get_registered_model("worldloop").tags
    champion = read_record(ChampionRecord, champion_tags[CHAMPION_RECORD])
    assert approval is not None and promotion is not None and champion is not None
    assert approval.verifies(key) and promotion.verifies(key) and champion.verifies(key)
    assert promotion.approval == approval and champion.promotion == promotion.signature
    assert (approval.identity, approval.authenticated, approval.reason) == (ALICE, False, "report reviewed")
    assert (promotion.subject.version, champion.version, champion.action) == (version, version, "promote")
    assert promotion.subject.run_id == show(version, settings=local).run_id

    assert pin_version(CHAMPION_URI, settings=local).version == version  # the chain verifies
    # Any altered byte breaks a signature; a record of one kind never passes for another.
    forged = approval.model_copy(update={"identity": "eve@example.com"})
    assert not forged.verifies(key) and not approval.verifies(b"x" * 32)
    assert read_record(PromotionRecord, tags[APPROVAL_RECORD]) is None
    with pytest.raises(UnverifiedChampion, match="champion record does not verify under this key"):
        pin_version(CHAMPION_URI, settings=local.model_copy(update={"signing_key": OTHER_KEY}))
    with pytest.raises(UnverifiedChampion, match="no signing key to verify the champion with"):
        elsewhere = {"home": tmp_path / "elsewhere", "mlflow_uri": local.resolved_mlflow_uri}  # no key there
        pin_version(CHAMPION_URI, settings=local.model_copy(update=elsewhere))


def test_promotion_needs_a_signed_approval_of_the_version_as_it_is(tmp_path: Path, local: Settings) -> None:
    version = _register(tmp_path / "a", local)
    mlflow = _mlflow(local)
    for tag, value in (
        ("approval.identity", ALICE),
        ("approval.reason", "trust me"),
        ("approval.time", "now"),
    ):
        mlflow.set_model_version_tag("worldloop", str(version), tag, value)  # an approval typed into MLflow
    with pytest.raises(Refused, match=f"v{version}'s approval is not signed: approve it again"):
        promote(version, settings=local)

    approve(version, reason="reviewed", settings=local.model_copy(update={"signing_key": OTHER_KEY}))
    with pytest.raises(Refused, match="approval does not count: its signature does not verify"):
        promote(version, settings=local)

    approve(version, reason="reviewed", settings=local)
    mlflow.set_model_version_tag(
        "worldloop", str(version), "interbench.scores", json.dumps(dict.fromkeys(DIMS, 1.0))
    )
    with pytest.raises(Refused, match=f"approval does not count: v{version} changed since it was approved"):
        promote(version, settings=local)
    assert "champion" not in mlflow.get_registered_model("worldloop").aliases

    approve(version, reason="reviewed the new scores", settings=local)
    assert promote(version, settings=local).champion_after == version


def test_rollback_is_signed_and_refuses_a_champion_serving_would_refuse(
    tmp_path: Path, local: Settings
) -> None:
    first, second = (_register(tmp_path / name, local) for name in ("a", "b"))
    for version in (first, second):
        approve(version, reason="ok", settings=local)
        promote(version, settings=local)
    mlflow = _mlflow(local)
    checkpoint = _version_tags(local, first)["lineage.checkpoint"]
    mlflow.set_model_version_tag("worldloop", str(first), "lineage.checkpoint", "s3://elsewhere/step-1")
    with pytest.raises(Refused, match="serving would refuse the previous champion: its evidence tags"):
        rollback(settings=local)
    assert pin_version(CHAMPION_URI, settings=local).version == second

    mlflow.set_model_version_tag("worldloop", str(first), "lineage.checkpoint", checkpoint)
    assert rollback(settings=local).champion_after == first
    champion = read_record(ChampionRecord, mlflow.get_registered_model("worldloop").tags[CHAMPION_RECORD])
    assert champion is not None and (champion.version, champion.action, champion.identity) == (
        first,
        "rollback",
        ALICE,
    )
    assert pin_version(CHAMPION_URI, settings=local).version == first


# -- the cluster profile ----------------------------------------------------------------------------


@dataclass
class Cluster:
    fake: FakeKube
    url: str
    local: Settings  # the same registry through the local profile (registering, and the demo's rules)
    tmp: Path

    def as_user(self, token: str, **fields: Any) -> Settings:
        """The cluster profile of someone whose kubeconfig presents ``token``."""
        kubeconfig = write_user_kubeconfig(self.tmp / f"kubeconfig-{token}", self.url, token)
        return Settings(
            profile="cluster",
            home=self.local.home,
            mlflow_uri=self.local.resolved_mlflow_uri,
            storage_root=str(self.tmp / "store"),
            kubeconfig=kubeconfig,
            gate_baseline_metrics=(),
            **fields,
        )

    def secret_reads(self, token: str) -> int:
        path = "/api/v1/namespaces/worldloop/secrets/worldloop-signing-key"
        return sum(
            r.path == path and r.headers["authorization"] == f"Bearer {token}" for r in self.fake.requests
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    users = {
        "alice-token": User(ALICE, ("worldloop-approvers",)),
        "mallory-token": User(MALLORY, ("developers",)),
    }
    fake = FakeKube(users=users)
    fake.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "worldloop-signing-key", "namespace": "worldloop"},
            "data": {"key": base64.b64encode(f"{KEY}\n".encode()).decode()},  # from a file: a newline
        }
    )
    server, url = fake.serve()
    local = Settings(home=tmp_path / "home", gate_baseline_metrics=())
    try:
        yield Cluster(fake, url, local, tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def test_cluster_decisions_are_made_as_the_kubernetes_user(tmp_path: Path, cluster: Cluster) -> None:
    version = _register(tmp_path / "a", cluster.local)
    alice, mallory = cluster.as_user("alice-token"), cluster.as_user("mallory-token")

    with pytest.raises(ValueError, match="--as is not accepted on the cluster profile"):
        approve(version, reason="ok", identity=ALICE, settings=mallory)
    with pytest.raises(ValueError, match="WORLDLOOP_IDENTITY and WORLDLOOP_APPROVERS apply to the local"):
        approve(version, reason="ok", settings=cluster.as_user("mallory-token", identity=ALICE))

    with pytest.raises(Refused, match=f"{MALLORY} is not in the Kubernetes group worldloop-approvers"):
        approve(version, reason="ok", settings=mallory)
    assert show(version, settings=alice).approval is None
    assert cluster.secret_reads("mallory-token") == 0  # refused before it needed the key
    reviews = [r for r in cluster.fake.requests if r.path == SELF_SUBJECT_REVIEWS]
    assert reviews and all(r.method == "POST" for r in reviews)

    info = approve(version, reason="report reviewed", settings=alice)
    assert info.approval is not None and info.approval.identity == ALICE
    approval = read_record(ApprovalRecord, _version_tags(alice, version)[APPROVAL_RECORD])
    assert approval is not None and approval.authenticated and approval.verifies(KEY.encode())
    assert cluster.secret_reads("alice-token") == 1  # the key, read with alice's own credentials

    with pytest.raises(Refused, match=f"may not promote: {MALLORY} is not in the Kubernetes group"):
        promote(version, settings=mallory)
    assert promote(version, settings=alice).champion_after == version
    audit = show(version, settings=alice).audit
    assert [(r.action, r.identity, r.result) for r in audit] == [
        ("approve", MALLORY, "refused"),
        ("approve", ALICE, "allowed"),
        ("promote", MALLORY, "refused"),
        ("promote", ALICE, "allowed"),
    ]
    # Serving on the cluster: the same key from its Secret through the environment, no kubeconfig.
    serving = Settings(
        profile="cluster",
        home=tmp_path / "replica",
        mlflow_uri=cluster.local.resolved_mlflow_uri,
        storage_root=str(tmp_path / "store"),
        signing_key=SecretStr(KEY),
    )
    assert pin_version(CHAMPION_URI, settings=serving).version == version


def test_a_local_approval_does_not_count_on_the_cluster(tmp_path: Path, cluster: Cluster) -> None:
    version = _register(tmp_path / "a", cluster.local)
    # Signed under the right key, but by a name typed locally: not an authenticated approver.
    local = cluster.local.model_copy(
        update={"approvers": [ALICE], "identity": ALICE, "signing_key": SecretStr(KEY)}
    )
    approve(version, reason="ok", settings=local)
    with pytest.raises(
        Refused, match=f"approval does not count: {ALICE} was not authenticated by Kubernetes"
    ):
        promote(version, settings=cluster.as_user("alice-token"))


def test_cluster_cli(tmp_path: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    version = _register(tmp_path / "a", cluster.local)
    alice = cluster.as_user("alice-token")
    env = {
        "PROFILE": "cluster",
        "HOME": str(alice.home),
        "MLFLOW_URI": alice.resolved_mlflow_uri,
        "STORAGE_ROOT": alice.resolved_storage_root,
        "KUBECONFIG": str(alice.kubeconfig),
        "GATE_BASELINE_METRICS": "",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"WORLDLOOP_{name}", value)
    monkeypatch.delenv("WORLDLOOP_IDENTITY", raising=False)
    monkeypatch.delenv("WORLDLOOP_APPROVERS", raising=False)
    get_settings.cache_clear()
    try:
        assert run(["models", "approve", str(version), "--reason", "ok", "--as", ALICE]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("worldloop:")]
        assert len(errors) == 1 and "error: --as is not accepted on the cluster profile" in errors[0]
        assert run(["models", "approve", str(version), "--reason", "ok"]) == 0
        assert f"approved by {ALICE}" in capsys.readouterr().out
        assert run(["models", "promote", str(version)]) == 0
        assert f"champion: none → v{version}" in capsys.readouterr().out

        monkeypatch.setenv(
            "WORLDLOOP_KUBECONFIG", str(write_user_kubeconfig(tmp_path / "k", cluster.url, "nobody"))
        )
        get_settings.cache_clear()
        assert run(["models", "rollback"]) == 2
        err = capsys.readouterr().err
        assert "cannot authenticate you with the Kubernetes API: 401 Unauthorized" in err
    finally:
        get_settings.cache_clear()
