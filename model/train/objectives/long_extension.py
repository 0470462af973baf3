"""Stage 4 objective: randomized long extension (DESIGN.md §6).

The stage-3 student rolls out to a random number of blocks — beyond the clips it was trained on —
with the same sink + window cache it serves with, driven by random player actions. A window of
``window_blocks`` blocks at the end of the rollout is then aligned with DMD: teacher (real score) and
critic (fake score) see it as a short image-to-video clip whose first frame is the latent frame just
before the window, with the camera re-based to that frame. Only the window keeps gradients.

Teacher-forcing steps (probability ``teacher_forcing_prob``) build the context from a real clip's
latents instead of the student's own outputs, so the student also learns to continue real footage;
the frame before the window is then the real one.

Every random choice here (teacher forcing, rollout length, player actions, exit steps) is drawn from
the seed of the *global* batch, so all data-parallel ranks run the same modules (what ZeRO-2/3 need,
see :mod:`worldloop.model.train.loop`) and one process with batch W·B draws what W processes with
batch B draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import WorldModel, i2v_condition
from worldloop.model.camera.actions import ActionFrame, parse_action
from worldloop.model.camera.plucker import CameraTrack, actions_to_camera, plucker_embedding
from worldloop.model.distill.self_forcing import self_forcing_rollout
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.objectives.base import RankBatch
from worldloop.model.train.objectives.batch import PreparedBatch
from worldloop.model.train.objectives.distill import DistillObjective, StudentSample
from worldloop.model.vae.autoencoder import CausalVideoVAE

KEYS = ("none", "w", "w", "w", "a", "d", "s", "w+a", "w+d", "space")


def random_actions(rng: np.random.Generator, frames: int) -> list[ActionFrame]:
    """A player's key/mouse track: held keys in runs of 4–12 frames, occasional mouse turns."""
    out: list[ActionFrame] = []
    while len(out) < frames:
        keys = KEYS[int(rng.integers(len(KEYS)))]
        dx = float(rng.normal(0, 1.5)) if rng.random() < 0.5 else 0.0
        frame = parse_action(keys, mouse_dx=dx)
        out += [frame] * int(rng.integers(4, 13))
    return out[:frames]


class LongExtensionObjective(DistillObjective):
    """Stage ``long``: the distill objective's updates on aligned windows of long rollouts (the
    generator update also reports teacher forcing, window frames and rollout blocks)."""

    stage = Stage.long

    def __init__(
        self, cfg: TrainConfig, model: WorldModel, *, vae: CausalVideoVAE, text_encoder: TextEncoder
    ) -> None:
        if cfg.long is None:
            raise ValueError("stage long needs a 'long' section (see stage_preset('long'))")
        super().__init__(cfg, model, vae=vae, text_encoder=text_encoder)
        self.lcfg = cfg.long

    def student_sample(
        self, inputs: PreparedBatch, batch: RankBatch, *, salt: int, grad: bool
    ) -> StudentSample:
        """The aligned window at the end of a long rollout, every choice seeded by the global batch:
        ``x`` (B, C, 1 + window_blocks·f, h, w) with frame 0 the latent frame before the window and
        gradient only through the window's blocks."""
        mcfg, lc = self.student.cfg, self.lcfg
        f, stride = mcfg.causal.block_frames, mcfg.vae.temporal_stride
        rng = np.random.default_rng([self.cfg.seed, batch.first, salt])
        real_blocks = (inputs.latents.shape[2] - 1) // f
        teacher_forcing = rng.random() < lc.teacher_forcing_prob and real_blocks > lc.window_blocks
        blocks = (
            real_blocks
            if teacher_forcing
            else int(rng.integers(lc.min_rollout_blocks, lc.max_rollout_blocks + 1))
        )
        b = inputs.latents.shape[0]
        player = None if teacher_forcing else self.player_track(rng, frames=1 + stride * blocks * f)
        camera = inputs.camera if player is None else self.rays(player, batch=b)
        first_window = blocks - lc.window_blocks + 1
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + batch.first * 7 + salt)
        with torch.set_grad_enabled(grad):
            x = self_forcing_rollout(
                self.student,
                reference=inputs.latents[:, :, :1],
                camera=camera,
                conditioning=inputs.conditioning,
                num_blocks=blocks,
                timesteps=self.timesteps,
                generator=g,
                height=self.cfg.height,
                width=self.cfg.width,
                context=inputs.latents if teacher_forcing else None,
                first_generated=first_window if teacher_forcing else 1,
                grad_from=first_window,
                global_batch=batch.global_batch,
                first_row=batch.first_row,
            ).video_latents
        prev = (first_window - 1) * f  # the latent frame just before the window
        clip = x[:, :, prev:]  # (B, C, 1 + window·f, h, w)
        if player is None:
            window_camera = inputs.camera[:, prev:]  # real clip: rays already relative to its frame 0
        else:  # re-based to the last video frame of latent frame `prev`
            window_camera = self.rays(player, batch=b, first=stride * prev)
        cond = i2v_condition(clip[:, :, :1].detach(), num_frames=clip.shape[2], temporal_stride=stride)
        info = {
            "teacher_forcing": float(teacher_forcing),
            "window_frames": float(clip.shape[2]),
            "rollout_blocks": float(blocks),
        }
        return StudentSample(clip, cond, window_camera, info)

    def player_track(self, rng: np.random.Generator, *, frames: int) -> CameraTrack:
        """The camera of a random player (:func:`random_actions`) over ``frames`` video frames."""
        mcfg = self.student.cfg
        return actions_to_camera(
            random_actions(rng, frames),
            width=self.cfg.width,
            height=self.cfg.height,
            fov_deg=mcfg.fov_deg,
            motion=mcfg.motion,
        )

    def rays(self, track: CameraTrack, *, batch: int, first: int | None = None) -> Tensor:
        """Grouped Plücker rays (batch, T, 6·stride, H, W) of ``track``; with ``first``, of its video
        frames from ``first`` on, re-based to that frame."""
        c2w, K = track.c2w, track.intrinsics
        if first is not None:
            c2w, K = torch.linalg.inv(c2w[first]) @ c2w[first:], K[first:]
        rays = plucker_embedding(K, c2w, self.cfg.height, self.cfg.width)
        stride = self.student.cfg.vae.temporal_stride
        return group_plucker(rays[None], temporal_stride=stride).expand(batch, -1, -1, -1, -1)
