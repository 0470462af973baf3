"""Stage 4: randomized long extension (DESIGN.md §6).

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
see :mod:`worldloop.model.train.distill_trainer`) and one process with batch W·B draws what W
processes with batch B draw.
"""

from __future__ import annotations

import numpy as np
import torch
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import i2v_condition
from worldloop.model.camera.actions import ActionFrame, parse_action
from worldloop.model.camera.plucker import actions_to_camera, plucker_embedding
from worldloop.model.distill.dmd import critic_loss, dmd_generator_loss
from worldloop.model.distill.self_forcing import self_forcing_rollout
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.distill_trainer import DistillTrainer
from worldloop.model.train.objectives import PreparedBatch

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


class LongExtensionTrainer(DistillTrainer):
    """Stage ``long``: the :class:`DistillTrainer` loop with long rollouts and windowed DMD."""

    def __init__(self, cfg: TrainConfig, *args: object, **kwargs: object) -> None:
        if cfg.stage is not Stage.long or cfg.long is None:
            raise ValueError("LongExtensionTrainer runs stage long (with 'distill' and 'long' sections)")
        super().__init__(cfg.model_copy(update={"stage": Stage.distill}), *args, **kwargs)  # type: ignore[arg-type]
        self.cfg = cfg
        self.lcfg = cfg.long

    # The two hooks DistillTrainer.run calls: a critic loss and a generator loss on one batch.
    def _window(self, batch: PreparedBatch, salt: int, index: int, *, grad: bool) -> dict[str, torch.Tensor]:
        """The aligned window of one rollout; ``index`` is the global batch's first sample index."""
        mcfg, lc = self.student.cfg, self.lcfg
        f, stride = mcfg.causal.block_frames, mcfg.vae.temporal_stride
        rng = np.random.default_rng([self.cfg.seed, index, salt])
        real_blocks = (batch.latents.shape[2] - 1) // f
        teacher_forcing = rng.random() < lc.teacher_forcing_prob and real_blocks > lc.window_blocks
        blocks = (
            real_blocks
            if teacher_forcing
            else int(rng.integers(lc.min_rollout_blocks, lc.max_rollout_blocks + 1))
        )
        total = 1 + blocks * f
        video_frames = 1 + stride * (total - 1)
        b = batch.latents.shape[0]
        if teacher_forcing:
            camera, c2w, K = batch.camera, None, None
        else:
            track = actions_to_camera(
                random_actions(rng, video_frames),
                width=self.cfg.width,
                height=self.cfg.height,
                fov_deg=mcfg.fov_deg,
                motion=mcfg.motion,
            )
            c2w, K = track.c2w, track.intrinsics
            rays = plucker_embedding(K, c2w, self.cfg.height, self.cfg.width)
            camera = group_plucker(rays[None], temporal_stride=stride).expand(b, -1, -1, -1, -1)
        first_window = blocks - lc.window_blocks + 1
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index * 7 + salt)
        with torch.set_grad_enabled(grad):
            x = self_forcing_rollout(
                self.student,
                reference=batch.latents[:, :, :1],
                camera=camera,
                conditioning=batch.conditioning,
                num_blocks=blocks,
                timesteps=self.timesteps,
                generator=g,
                height=self.cfg.height,
                width=self.cfg.width,
                context=batch.latents if teacher_forcing else None,
                first_generated=first_window if teacher_forcing else 1,
                grad_from=first_window,
                global_batch=self.global_batch,
                first_row=self.first_row,
            ).video_latents
        start = 1 + (first_window - 1) * f  # first latent frame of the window
        prev = start - 1
        clip = x[:, :, prev:]  # (B, C, 1 + window·f, h, w): frame 0 is the frame before the window
        if teacher_forcing:
            window_camera = batch.camera[:, prev:]  # real clip: rays already relative to its frame 0
        else:
            assert c2w is not None and K is not None
            v0 = stride * prev  # the last video frame of latent frame `prev`
            rel = torch.linalg.inv(c2w[v0]) @ c2w[v0:]
            rays = plucker_embedding(K[v0:], rel, self.cfg.height, self.cfg.width)
            window_camera = group_plucker(rays[None], temporal_stride=stride).expand(b, -1, -1, -1, -1)
        cond = i2v_condition(clip[:, :, :1].detach(), num_frames=clip.shape[2], temporal_stride=stride)
        return {
            "x": clip,
            "cond": cond,
            "camera": window_camera,
            "teacher_forcing": torch.tensor(teacher_forcing),
            "blocks": torch.tensor(blocks),
        }

    def critic_step_loss(self, batch: PreparedBatch, idx: list[int], k: int, forward: object) -> torch.Tensor:
        w = self._window(batch, k, self.global_first(idx), grad=False)
        gens = [torch.Generator().manual_seed(self.cfg.seed * 7_000_003 + i * 13 + k) for i in idx]
        return critic_loss(
            self.critic,
            w["x"],
            cond=w["cond"],
            camera=w["camera"],
            conditioning=batch.conditioning,
            generators=gens,
            shift=self.cfg.shift,
            forward=forward,
        )

    def generator_step_loss(
        self, batch: PreparedBatch, uncond: object, idx: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self._window(batch, 997, self.global_first(idx), grad=True)
        gens = [torch.Generator().manual_seed(self.cfg.seed * 9_000_011 + i) for i in idx]
        loss, info = dmd_generator_loss(
            w["x"],
            teacher=self.teacher,
            critic=self.critic,
            cond=w["cond"],
            camera=w["camera"],
            conditioning=batch.conditioning,
            unconditional=uncond,  # type: ignore[arg-type]
            guidance=self.dcfg.guidance_scale,
            generators=gens,
            shift=self.cfg.shift,
        )
        info["teacher_forcing"] = float(w["teacher_forcing"])
        info["window_frames"] = float(w["x"].shape[2])
        info["rollout_blocks"] = float(w["blocks"])
        return loss, info
