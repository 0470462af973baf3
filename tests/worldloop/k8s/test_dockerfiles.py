"""The Dockerfiles in infra/docker, checked without a Docker engine: a small line parser (continuations,
ARG defaults, stages) and the rules every image follows — pinned bases, a non-root final USER, no
secrets in ENV/ARG, the project installed, OCI labels."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worldloop.k8s.render import REPO_ROOT

DOCKER = REPO_ROOT / "infra" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
_SECRETISH = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", re.I)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each with its (INSTRUCTION, arguments) lines."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continuation
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_expand(words[0], args), name=name))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = _expand(value.strip('"'), args)
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return args, stages


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def test_dockerfiles_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.component", "Dockerfile.serving"]
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".worldloop", ".git", "build", "*.egg-info", "tests"} <= set(ignore)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path: Path) -> None:
    args, stages = parse(path)
    assert len(stages) >= 2, "multi-stage build expected"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"unresolved ARG in FROM {stage.base}"
        image = stage.base.split("@")[0]
        assert "@sha256:" in stage.base or ":" in image.rsplit("/", 1)[-1], f"FROM {stage.base} not pinned"
        assert not image.endswith(":latest"), f"FROM {stage.base} uses latest"
    final = stages[-1]
    users = [rest for ins, rest in final.instructions if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage must run as a non-root USER"
    for stage in stages:
        for ins, rest in stage.instructions:
            if ins in ("ENV", "ARG"):
                for key, _ in re.findall(r"(\w+)=(\S+)", rest):
                    assert not _SECRETISH.search(key), f"{path.name}: {ins} {key} looks like a secret"
    for key in args:
        assert not _SECRETISH.search(key), f"{path.name}: ARG {key} looks like a secret"
    installs = [rest for ins, rest in final.instructions if ins == "RUN" and "pip install" in rest]
    assert any(re.search(r"worldloop(\[\w+\])?==", r) for r in installs), "the project is not installed"
    labels = " ".join(rest for ins, rest in final.instructions if ins == "LABEL")
    for key in ("title", "source", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert any(ins == "HEALTHCHECK" for ins, _ in final.instructions)


def test_serving_image_matches_the_rayservice() -> None:
    args, stages = parse(DOCKER / "Dockerfile.serving")
    install = " ".join(rest for ins, rest in stages[-1].instructions if ins == "RUN")
    assert "worldloop[gpu]==" in install  # SageAttention extra
    rayservice = (REPO_ROOT / "infra/k8s/base/rayservice.yaml").read_text()
    assert f'rayVersion: "{args["RAY_VERSION"]}"' in rayservice
    assert stages[-1].base.startswith(f"rayproject/ray:{args['RAY_VERSION']}-py311-cu")
    _, component = parse(DOCKER / "Dockerfile.component")
    assert all(s.base.startswith("pytorch/pytorch:") for s in component)
