"""Autoregressive distillation (DESIGN.md §6, stages 3–4): Self-Forcing rollouts and DMD losses.

Single-device code: no process groups here; the trainers in ``model/train`` apply data parallelism.
"""

from worldloop.model.distill.dmd import critic_loss, dmd_generator_loss, guided_x0
from worldloop.model.distill.self_forcing import SelfForcingRollout, self_forcing_rollout

__all__ = ["SelfForcingRollout", "critic_loss", "dmd_generator_loss", "guided_x0", "self_forcing_rollout"]
