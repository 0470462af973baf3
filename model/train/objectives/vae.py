"""Stage 0 objective: the causal video VAE itself (DESIGN.md §6 stage 0).

The VAE is the primary module (the checkpoint stores it as ``vae.safetensors``; there is no world model
yet): ``grad_accum`` micro-batches per optimiser step, each a fresh global batch of training windows,
with the loss of :func:`~worldloop.model.vae.loss.vae_loss` — pixel reconstruction + SSIM + a small KL,
decoded through the same streaming path inference runs. Before every checkpoint the VAE's per-channel
latent statistics are re-measured on a fixed set of windows (:func:`~worldloop.model.vae.fit_latent_stats`),
so the latents every later stage denoises are ~unit variance; they do not enter the VAE's own loss
(``decode`` undoes what ``encode`` applies).
"""

from __future__ import annotations

import torch
from torch import Tensor

from worldloop.data import Mixture
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.objectives import base
from worldloop.model.train.windows import Window, WindowSampler
from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.latent_stats import fit_latent_stats
from worldloop.model.vae.linear_code import fit_linear_code
from worldloop.model.vae.loss import vae_loss

STATS_SEED = 104_729  # the windows the latent statistics are measured on (fixed: a resume measures the same)
CODE_SEED, CODE_CLIPS = 130_363, 64  # the windows a fresh VAE's linear block code is fitted on


def fit_fresh_code(vae: CausalVideoVAE, cfg: TrainConfig, data: Mixture) -> float | None:
    """Fit a fresh VAE's linear block code (:mod:`~worldloop.model.vae.linear_code`) as the PCA of
    :data:`CODE_CLIPS` fixed windows of the stage's data, before its first step (every rank fits the
    same); returns the code's RMS coefficient, or None for a VAE without one."""
    if not vae.cfg.linear_code or cfg.vae is None:
        return None
    assert vae.encoder.code is not None and vae.decoder.code is not None
    videos = torch.stack([w.video for w in fixed_windows(cfg, data, seed=CODE_SEED, count=CODE_CLIPS)])
    return fit_linear_code(vae.encoder.code, vae.decoder.code, [videos])


def fixed_windows(cfg: TrainConfig, data: Mixture, *, seed: int, count: int) -> list[Window]:
    """``count`` windows of the stage's last clip length, the same for every rank and every resume."""
    sampler = WindowSampler(
        data, frames=cfg.curriculum[-1].frames, height=cfg.height, width=cfg.width, seed=seed
    )
    return sampler.batch(list(range(count)))


class VAEObjective(base.Objective):
    """Stage ``vae`` of ``cfg``: train ``vae`` on the stage's data (``data`` also feeds the latent
    statistics measured before each checkpoint)."""

    primary_file = "vae"

    def __init__(self, cfg: TrainConfig, vae: CausalVideoVAE, *, data: Mixture) -> None:
        if cfg.stage is not Stage.vae or cfg.vae is None:
            raise ValueError("the VAE objective trains stage vae (with a 'vae' section)")
        self.cfg, self.loss_cfg, self.vae, self.data = cfg, cfg.vae, vae, data
        groups = base.freeze_except(vae, [base.LrGroup("vae", list(vae.parameters()), cfg.lr)])
        width = max(vae.cfg.stage_channels)
        self.trained = (base.TrainedModule("vae", vae, groups, width, accumulation=cfg.grad_accum),)
        self.updates = (base.Update("vae", "loss", self.loss),) * cfg.grad_accum

    def loss(self, batch: base.RankBatch, forward: base.Forward) -> tuple[Tensor, base.Metrics]:
        """Reconstruction + SSIM + KL of one micro-batch; the posterior sample is seeded by this rank's
        first sample index (reproducible for a given world size)."""
        video = torch.stack([w.video for w in batch.windows]).to(batch.device)  # (B, 3, F, H, W)
        g = torch.Generator(device=batch.device).manual_seed(self.cfg.seed * 1_000_003 + batch.indices[0])
        loss, parts = vae_loss(
            self.vae,
            video.to(next(self.vae.parameters()).dtype),
            kl_weight=self.loss_cfg.kl_weight,
            ssim_weight=self.loss_cfg.ssim_weight,
            pixel=self.loss_cfg.pixel_loss,
            generator=g,
        )
        return loss, {f"vae/{k}": v for k, v in parts.items() if k != "loss"}

    def before_checkpoint(self, device: torch.device) -> None:
        """Measure the latent statistics on ``latent_stats_clips`` fixed windows (every rank, in the
        same order: under ZeRO-3 the encoder's forward gathers its partitions collectively)."""
        dtype = next(self.vae.parameters()).dtype
        windows = fixed_windows(self.cfg, self.data, seed=STATS_SEED, count=self.loss_cfg.latent_stats_clips)
        videos = (w.video[None].to(device=device, dtype=dtype) for w in windows)
        was_training = self.vae.training
        self.vae.eval()
        fit_latent_stats(self.vae, videos)
        self.vae.train(was_training)

    def metadata(self) -> dict[str, str]:
        return {"vae_config": self.vae.cfg.model_dump_json()}
