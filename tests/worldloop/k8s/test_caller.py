"""``who_am_i`` and ``read_secret_value`` against the fake Kubernetes API server (``tests/fake_kube.py``)
through a kubeconfig per user: the SelfSubjectReview a real server answers, an unknown token, a server
older than 1.28, and a Secret's value read as the caller."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kube import AUTHENTICATED, SELF_SUBJECT_REVIEWS, FakeKube, User, write_user_kubeconfig

from worldloop.k8s.caller import KubeUser, read_secret_value, who_am_i
from worldloop.k8s.client import KubeError

ALICE = User("alice@example.com", ("worldloop-approvers",))


@pytest.fixture
def fake() -> Iterator[tuple[FakeKube, str]]:
    kube = FakeKube(users={"alice-token": ALICE})
    server, url = kube.serve()
    try:
        yield kube, url
    finally:
        server.shutdown()
        server.server_close()


def test_who_am_i_asks_the_api_server(fake: tuple[FakeKube, str], tmp_path: Path) -> None:
    kube, url = fake
    kubeconfig = str(write_user_kubeconfig(tmp_path / "alice", url, "alice-token"))
    assert who_am_i(kubeconfig=kubeconfig) == KubeUser(ALICE.username, ("worldloop-approvers", AUTHENTICATED))
    review = kube.requests[-1]
    assert (review.method, review.path) == ("POST", SELF_SUBJECT_REVIEWS)
    assert review.body == {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}

    deployer = who_am_i(kubeconfig=str(write_user_kubeconfig(tmp_path / "ci", url, kube.token)))
    assert deployer.username == "system:serviceaccount:ci:deployer"
    with pytest.raises(KubeError, match="401 Unauthorized"):
        who_am_i(kubeconfig=str(write_user_kubeconfig(tmp_path / "bad", url, "guessed")))


def test_who_am_i_on_a_server_before_1_28(tmp_path: Path) -> None:
    kube = FakeKube(with_self_review=False, users={"alice-token": ALICE})
    server, url = kube.serve()
    try:
        with pytest.raises(KubeError, match=r"no SelfSubjectReview \(v1 needs Kubernetes 1\.28\+\)"):
            who_am_i(kubeconfig=str(write_user_kubeconfig(tmp_path / "alice", url, "alice-token")))
    finally:
        server.shutdown()
        server.server_close()


def test_read_secret_value(fake: tuple[FakeKube, str], tmp_path: Path) -> None:
    kube, url = fake
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k", "namespace": "worldloop"}}
    kube.put(secret | {"data": {"key": base64.b64encode(b"s3cret\n").decode(), "bad": "%%"}})
    kubeconfig = str(write_user_kubeconfig(tmp_path / "alice", url, "alice-token"))
    assert read_secret_value("worldloop", "k", "key", kubeconfig=kubeconfig) == b"s3cret\n"
    with pytest.raises(KubeError, match="has no key 'other'"):
        read_secret_value("worldloop", "k", "other", kubeconfig=kubeconfig)
    with pytest.raises(KubeError, match="is not base64"):
        read_secret_value("worldloop", "k", "bad", kubeconfig=kubeconfig)
    with pytest.raises(KubeError, match='404 NotFound: secrets "missing" not found'):
        read_secret_value("worldloop", "missing", "key", kubeconfig=kubeconfig)
