"""Stage 1/2 objective: flow matching on camera-conditioned, image-conditioned clips (DESIGN.md §6).

Stages 1 and 2 train the bidirectional base model (full attention over the clip, any length); it is
the teacher of stage 3, which turns it into the block-causal student.

A batch of :class:`~worldloop.model.train.windows.Window` goes through the frozen VAE and text encoder,
gets Plücker rays grouped per latent frame, and is noised with one σ per sample (or per block, with
``per_frame``). Latent frame 0 is the reference image: it stays clean (σ = 0), is given to the model
through the I2V channels as well, and is left out of the loss. One optimiser step accumulates
``grad_accum`` micro-batches, each a fresh global batch.

Stage 2 feeds the window's instruction turns: each latent frame's tokens cross-attend to the turn in
force there (issued at or before it), none before the first (:mod:`.batch`), so a two-event window
teaches "open the door" on the frames where the door opens and "make it night" after the second onset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.arch.dit import set_gradient_checkpointing
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.diffusion.flow_matching import add_noise, velocity_target
from worldloop.model.diffusion.schedule import sample_training_sigmas
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.config import ParamGroup, Stage, TrainConfig
from worldloop.model.train.objectives import base
from worldloop.model.train.objectives.batch import PreparedBatch, prepare_batch
from worldloop.model.train.windows import Window
from worldloop.model.vae.autoencoder import CausalVideoVAE


def predict_velocity(
    model: Callable[..., Tensor],
    x_t: Tensor,
    sigma: Tensor,
    batch: PreparedBatch,
    *,
    causal: bool = False,
    camera: Tensor | None = None,
) -> Tensor:
    """The model's velocity for ``x_t`` at per-frame noise levels ``sigma`` (B, T) with ``batch``'s I2V
    condition, camera and conditioning (``camera``, when given, in place of its own)."""
    return model(
        x_t,
        timesteps=sigma * 1000.0,
        cond=batch.cond,
        camera=batch.camera if camera is None else camera,
        conditioning=batch.conditioning,
        causal=causal,
    )


def flow_matching_loss(model: WorldModel, batch: PreparedBatch, **kwargs: Any) -> Tensor:
    """MSE between predicted and true velocity over the generated latent frames (1..T-1); ``kwargs``
    are :func:`flow_matching_velocities`'."""
    v, target = flow_matching_velocities(model, batch, **kwargs)
    return F.mse_loss(v[:, :, 1:], target[:, :, 1:])


def flow_matching_velocities(
    model: WorldModel,
    batch: PreparedBatch,
    *,
    shift: float,
    per_frame: bool,
    generators: Sequence[torch.Generator],
    causal: bool = False,
    forward: Callable[..., Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The model's velocity on ``batch`` noised with each sample's σ and noise drawn from its generator,
    and the true velocity, both (B, C, T, h, w) float32 (frame 0, the clean reference, included).

    One generator per sample draws that sample's σ and noise, so a sample's loss does not depend on
    which batch, process or rank it lands in (one process and two ranks see the same numbers).
    ``forward`` calls the model (a DeepSpeed engine must be called itself, not its ``module``:
    ZeRO-2 resets its gradient bookkeeping in the engine's forward).
    """
    x0 = batch.latents
    b, _, t = x0.shape[:3]
    if len(generators) != b:
        raise ValueError(f"need one generator per sample ({b}), got {len(generators)}")
    sigmas, noises = [], []
    for g in generators:
        s = sample_training_sigmas(
            1,
            t - 1,
            shift=shift,
            per_frame=per_frame,
            generator=g,
            frames_per_block=model.cfg.causal.block_frames,
        )
        sigmas.append(s)
        noises.append(torch.randn((1, *x0.shape[1:]), generator=g))
    # Frame 0 (the reference) is clean; the blocks after it get the drawn levels.
    sigma = torch.cat([torch.zeros(b, 1), torch.cat(sigmas)], dim=1).to(x0.device)
    noise = torch.cat(noises).to(x0)
    x_t = add_noise(x0, noise, sigma)
    v = predict_velocity(forward or model, x_t, sigma, batch, causal=causal)
    return v.float(), velocity_target(x0, noise).float()


def trainable_groups(model: WorldModel, cfg: TrainConfig) -> tuple[base.LrGroup, ...]:
    """The groups ``cfg.trainable`` names (experts at ``expert_lr`` when set); the rest is frozen."""
    params = model.parameter_groups()
    groups: list[base.LrGroup] = []
    if ParamGroup.experts in cfg.trainable:
        for i in range(model.cfg.num_experts):
            lr = cfg.expert_lr[i] if cfg.expert_lr is not None else cfg.lr
            groups.append(base.LrGroup(f"expert{i}", params[f"expert{i}"], lr))
    for group in (ParamGroup.camera, ParamGroup.interaction):
        if group in cfg.trainable:
            groups.append(base.LrGroup(group.value, params[group.value], cfg.lr))
    return base.freeze_except(model, groups)


class FlowMatchingObjective(base.Objective):
    """Stage ``action`` or ``instruction`` of ``cfg``: ``grad_accum`` flow-matching micro-batches of
    ``model`` per optimiser step (stage 2 also feeds the instruction turns, each over its frames)."""

    def __init__(
        self, cfg: TrainConfig, model: WorldModel, *, vae: CausalVideoVAE, text_encoder: TextEncoder
    ) -> None:
        if cfg.stage not in (Stage.action, Stage.instruction):
            raise ValueError(f"flow matching trains stages action and instruction, not {cfg.stage.value}")
        self.cfg, self.model, self.vae, self.text_encoder = cfg, model, vae.eval(), text_encoder
        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
        groups = trainable_groups(model, cfg)
        self.trained = (
            base.TrainedModule("model", model, groups, model.cfg.dim, accumulation=cfg.grad_accum),
        )
        self.updates = (base.Update("model", "loss", self.loss),) * cfg.grad_accum

    def loss(self, batch: base.RankBatch, forward: base.Forward) -> tuple[Tensor, base.Metrics]:
        """Flow-matching loss of one micro-batch; each sample's σ and noise from its own seed.

        With ``counterfactual_weight`` w > 0, every window that keeps its turns and carries its twin's
        window (:attr:`Window.twin`) brings the twin into the batch, noised with the *same* σ and noise.
        The two differ only where the event shows, so the difference of their true velocities is what
        the instruction alone must change, free of everything else the model gets wrong on both; the
        loss adds w · MSE(v̂ − v̂_twin, v − v_twin) over the generated frames (``counterfactual``)."""
        windows = self.drop_captions(batch)
        seeds = [self.cfg.seed * 1_000_003 + i for i in batch.indices]
        pairs = [(k, w.twin) for k, w in enumerate(windows) if w.turns and w.twin is not None]
        if self.cfg.counterfactual_weight == 0:
            pairs = []
        paired = [k for k, _ in pairs]
        inputs = prepare_batch(
            windows + [twin for _, twin in pairs],
            vae=self.vae,
            text_encoder=self.text_encoder,
            with_instruction=self.cfg.stage is Stage.instruction,
            device=batch.device,
            i2v=self.model.cfg,
        )
        gens = [torch.Generator().manual_seed(seed) for seed in seeds + [seeds[k] for k in paired]]
        v, target = flow_matching_velocities(
            self.model,
            inputs,
            shift=self.cfg.shift,
            per_frame=self.cfg.per_frame_sigma,
            generators=gens,
            forward=forward,
        )
        loss = F.mse_loss(v[:, :, 1:], target[:, :, 1:])
        if not paired:
            return loss, {}
        twin_rows = list(range(len(windows), len(windows) + len(paired)))
        gap = F.mse_loss((v[paired] - v[twin_rows])[:, :, 1:], (target[paired] - target[twin_rows])[:, :, 1:])
        return loss + self.cfg.counterfactual_weight * gap, {"counterfactual": float(gap.detach())}

    def drop_captions(self, batch: base.RankBatch) -> list[Window]:
        """The batch's windows, each replaced by its unconditional twin (empty text, no instruction —
        what the stage-3/4 real score's guidance takes as unconditional) with probability
        ``caption_dropout``, drawn from the sample's own seed (the same on any data-parallel layout)."""
        p = self.cfg.caption_dropout
        if p == 0.0:
            return list(batch.windows)
        draws = [
            float(torch.rand((), generator=torch.Generator().manual_seed(self.cfg.seed * 5_000_011 + i)))
            for i in batch.indices
        ]
        windows = zip(batch.windows, draws, strict=True)
        return [replace(w, caption="", turns=(), scene=None) if u < p else w for w, u in windows]

    def metadata(self) -> dict[str, str]:
        return {"model_config": self.model.cfg.model_dump_json()}
