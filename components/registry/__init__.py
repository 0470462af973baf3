"""The model registry (MLflow): register versions with lineage, approve, promote to ``champion`` through
the InterBench gate, roll back (DESIGN.md §8). Serving loads ``models:/worldloop@champion``.

* ``register.py`` — :func:`register_version`: checkpoint, scores, lineage → version + ``candidate``;
* ``versions.py`` — reading: :func:`list_versions`, :func:`show`, :func:`resolve`,
  :func:`download_checkpoint`;
* ``gate.py`` — the InterBench gate (pure);
* ``promotion.py`` — :func:`approve`, :func:`promote`, :func:`rollback` and their audit records;
* ``tags.py`` — every tag name written.
"""

from worldloop.components.registry.audit import AuditRecord
from worldloop.components.registry.gate import DimensionCheck, GateResult, gate
from worldloop.components.registry.promotion import Decision, Refused, approve, check_gate, promote, rollback
from worldloop.components.registry.register import register_version
from worldloop.components.registry.versions import (
    CANDIDATE,
    CHAMPION,
    Approval,
    ModelVersionInfo,
    download_checkpoint,
    list_versions,
    resolve,
    show,
)

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "Approval",
    "AuditRecord",
    "Decision",
    "DimensionCheck",
    "GateResult",
    "ModelVersionInfo",
    "Refused",
    "approve",
    "check_gate",
    "download_checkpoint",
    "gate",
    "list_versions",
    "promote",
    "register_version",
    "resolve",
    "rollback",
    "show",
]
