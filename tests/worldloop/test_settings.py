"""Settings: WORLDLOOP_* environment, local defaults, cluster requirements, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worldloop.settings import Profile, Settings


def test_local_defaults_live_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path))
    settings = Settings()
    assert settings.profile is Profile.local
    assert settings.resolved_mlflow_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert settings.resolved_storage_root == str(tmp_path.resolve() / "store")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLDLOOP_STORAGE_ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("WORLDLOOP_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("WORLDLOOP_S3_SECRET_ACCESS_KEY", "hunter2")
    settings = Settings()
    assert settings.resolved_storage_root == "s3://bucket/prefix"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert "hunter2" not in repr(settings)  # secrets never print
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "hunter2"


def test_cluster_profile_requires_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLDLOOP_PROFILE", "cluster")
    with pytest.raises(ValidationError, match="WORLDLOOP_MLFLOW_URI, WORLDLOOP_STORAGE_ROOT"):
        Settings()
    monkeypatch.setenv("WORLDLOOP_MLFLOW_URI", "http://mlflow:5000")
    monkeypatch.setenv("WORLDLOOP_STORAGE_ROOT", "s3://worldloop/runs")
    assert Settings().resolved_mlflow_uri == "http://mlflow:5000"


def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLDLOOP_PROFILE", "laptop")
    with pytest.raises(ValidationError, match="profile"):
        Settings()
    monkeypatch.delenv("WORLDLOOP_PROFILE")
    monkeypatch.setenv("WORLDLOOP_KFP_HOST", "  ")
    with pytest.raises(ValidationError, match="kfp_host"):
        Settings()
    with pytest.raises(ValidationError, match="extra"):
        Settings(unknown_field=1)  # type: ignore[call-arg]


def test_registry_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.registered_model == "worldloop" and settings.gate_tolerance == 0.02
    assert settings.resolved_approvers == ("demo@local",)  # the local demo can approve its own candidate
    assert "@" in settings.resolved_identity  # USER@HOST unless set
    monkeypatch.setenv("WORLDLOOP_APPROVERS", "alice@example.com, bob@example.com")
    monkeypatch.setenv("WORLDLOOP_IDENTITY", "alice@example.com")
    monkeypatch.setenv("WORLDLOOP_GATE_TOLERANCE", "0.05")
    settings = Settings()
    assert settings.resolved_approvers == ("alice@example.com", "bob@example.com")
    assert settings.resolved_identity == "alice@example.com" and settings.gate_tolerance == 0.05
    monkeypatch.setenv("WORLDLOOP_APPROVERS", '["carol@example.com"]')
    assert Settings().resolved_approvers == ("carol@example.com",)
    monkeypatch.delenv("WORLDLOOP_APPROVERS")
    monkeypatch.setenv("WORLDLOOP_PROFILE", "cluster")
    monkeypatch.setenv("WORLDLOOP_MLFLOW_URI", "http://mlflow:5000")
    monkeypatch.setenv("WORLDLOOP_STORAGE_ROOT", "s3://worldloop/runs")
    assert Settings().resolved_approvers == ()  # nobody approves on a cluster until configured


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("approvers", "alice@example.com,,"),
        ("approvers", "[1"),
        ("identity", " "),
        ("registered_model", "world/loop"),
        ("registered_model", "a@b"),
        ("gate_tolerance", "-0.1"),
        ("gate_tolerance", "2"),
        ("signing_key", "too short for HMAC-SHA256"),
        ("signing_secret", "worldloop-signing-key"),
        ("signing_secret", "worldloop/a/b"),
    ],
)
def test_bad_registry_settings_fail(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(f"WORLDLOOP_{field.upper()}", value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_signing_key_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().signing_secret == "worldloop/worldloop-signing-key"
    monkeypatch.setenv("WORLDLOOP_SIGNING_KEY", "k" * 32)
    assert Settings().signing_key is not None and "k" * 32 not in repr(Settings())  # a secret
    monkeypatch.setenv("WORLDLOOP_SIGNING_KEY_FILE", str(tmp_path / "key"))
    with pytest.raises(ValidationError, match="not both"):
        Settings()


def test_gate_settings_from_the_environment_stay_hashable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gate_baseline_metrics == ("rollout.psnr.blocks_1_2", "direction.all")
    monkeypatch.setenv("WORLDLOOP_GATE_FLOORS", '{"trigger": 0.5, "camera.rotation_deg": 2}')
    monkeypatch.setenv("WORLDLOOP_GATE_BASELINE_METRICS", "direction.all, rollout.psnr.blocks_1_2")
    settings = Settings()
    assert dict(settings.gate_floors) == {"trigger": 0.5, "camera.rotation_deg": 2.0}
    assert settings.gate_baseline_metrics == ("direction.all", "rollout.psnr.blocks_1_2")
    assert hash(settings) == hash(Settings())  # cached per settings (storage clients)
    monkeypatch.setenv("WORLDLOOP_GATE_BASELINE_METRICS", "")
    assert Settings().gate_baseline_metrics == ()
    monkeypatch.setenv("WORLDLOOP_GATE_FLOORS", '{"trigger": "high"}')
    with pytest.raises((ValidationError, ValueError)):
        Settings()


def test_session_database_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path))
    assert Settings().resolved_session_db == f"sqlite:///{tmp_path.resolve() / 'sessions.db'}"
    url = "postgresql+psycopg2://mlflow:hunter2hunter2@postgres:5432/mlflow"
    monkeypatch.setenv("WORLDLOOP_SERVE_SESSION_DB", url)
    settings = Settings()
    assert settings.resolved_session_db == url and "hunter2" not in repr(settings)
    monkeypatch.setenv("WORLDLOOP_SERVE_SESSION_DB", " ")
    with pytest.raises(ValidationError, match="serve_session_db"):
        Settings()
    monkeypatch.delenv("WORLDLOOP_SERVE_SESSION_DB")
    cluster_env = {"PROFILE": "cluster", "MLFLOW_URI": "http://m:5000", "STORAGE_ROOT": "s3://w"}
    for name, value in cluster_env.items():
        monkeypatch.setenv(f"WORLDLOOP_{name}", value)
    cluster = Settings()  # other processes on a cluster need no session database
    with pytest.raises(ValueError, match="WORLDLOOP_SERVE_SESSION_DB"):
        _ = cluster.resolved_session_db
