"""The model registry (MLflow): register versions with lineage, approve, promote to ``champion`` through
the promotion gate, roll back (DESIGN.md §8). Serving loads ``models:/worldloop@champion``.

* ``register.py`` — :func:`register_version`: checkpoint, scores, lineage → version + ``candidate``;
* ``versions.py`` — reading what the CLI and the rules show: :func:`list_versions`, :func:`show`
  (loading a version's checkpoint is the platform's: :mod:`worldloop.platform.registry`);
* ``gate.py`` — the promotion gate (pure): measured, beats both baselines, floors, no regression on a
  comparable InterBench; ``evidence.py`` — what a version was measured with, as tags and back;
* ``promotion.py`` — :func:`approve`, :func:`promote`, :func:`rollback`, their audit records and their
  signed records (:mod:`worldloop.platform.signing`, which serving verifies);
* ``identity.py`` — who decides: the authenticated Kubernetes user on a cluster (approvers: the group
  ``worldloop-approvers``), an asserted name locally; and the key decisions are signed with;
* ``tags.py`` — every tag name written.
"""

from worldloop.components.registry.audit import AuditRecord
from worldloop.components.registry.gate import DimensionCheck, Evidence, GatePolicy, GateResult, gate
from worldloop.components.registry.promotion import Decision, Refused, approve, check_gate, promote, rollback
from worldloop.components.registry.register import register_version
from worldloop.components.registry.versions import (
    CANDIDATE,
    CHAMPION,
    Approval,
    ModelVersionInfo,
    list_versions,
    show,
)

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "Approval",
    "AuditRecord",
    "Decision",
    "DimensionCheck",
    "Evidence",
    "GatePolicy",
    "GateResult",
    "ModelVersionInfo",
    "Refused",
    "approve",
    "check_gate",
    "gate",
    "list_versions",
    "promote",
    "register_version",
    "rollback",
    "show",
]
