"""How the quality ladder makes a model's video: the serving rollout, or the teacher's whole-clip sampler.

* :attr:`Sampler.rollout` — :class:`~worldloop.model.rollout.Rollout`, block by block with the KV cache
  and the checkpoint's own timesteps (``stack.timesteps``): what serving streams, and what stages 3–4
  (the causal few-step student) were trained to do.
* :attr:`Sampler.teacher` — stages 1–2 train a *bidirectional* model on whole clips (full attention,
  latent frame 0 clean, one noise level for the rest; ``worldloop.model.train.objectives``). Streaming it
  block-causally through the KV cache would show it a mask and a few-step schedule it never saw and
  understate it, so it is sampled the way it was trained and the way stage 3 queries it as the real
  score: the whole clip at once, ``causal=False``, an Euler ODE (:func:`euler_sample`) over
  ``TEACHER_STEPS`` shifted timesteps, frame 0 held at the clean reference latent. No classifier-free
  guidance: stages 1–2 never drop the caption, so no unconditional branch was trained. The camera is
  the data's (SynthWorld's field of view), as in training, not the rollout's ``model.fov_deg``.

``auto`` picks by the stage that wrote the checkpoint (``stack.stage``, from its ``state.json``):
``action``/``instruction`` → teacher; anything else (``vae``, ``distill``, ``long``, random) → rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.warp import i2v_stills
from worldloop.model.arch.world_model import Conditioning, i2v_condition
from worldloop.model.camera.actions import ActionFrame
from worldloop.model.camera.plucker import actions_to_camera, plucker_embedding
from worldloop.model.diffusion.sampler import euler_sample
from worldloop.model.diffusion.schedule import euler_timesteps
from worldloop.model.spec import build_modules
from worldloop.platform.stack import ModelStack

TEACHER_STAGES = frozenset({"action", "instruction"})  # bidirectional flow-matching stages (1, 2)
TEACHER_STEPS = 20  # Euler steps of the teacher sampler


class Sampler(str, Enum):
    rollout = "rollout"
    teacher = "teacher"


def choose_sampler(stack: ModelStack, requested: str = "auto") -> Sampler:
    """``auto``: teacher for a stage-1/2 checkpoint, rollout otherwise; or the one ``requested``."""
    if requested == "auto":
        return Sampler.teacher if stack.stage in TEACHER_STAGES else Sampler.rollout
    try:
        return Sampler(requested)
    except ValueError:
        raise ValueError(f"--sampler must be auto, rollout or teacher, got {requested!r}") from None


def random_weight_stack(stack: ModelStack, *, seed: int) -> ModelStack:
    """The same spec with freshly initialised weights (world model *and* VAE), seeded with ``seed``:
    the random-weight baseline. The text encoder is the same frozen one (it is never trained)."""
    model, vae = build_modules(stack.spec, seed=seed)
    return ModelStack(stack.uri, None, stack.spec, model.eval(), vae.eval(), stack.text_encoder, None)


def to_pixels(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(video: Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] → (F, H, W, 3) uint8."""
    rgb = ((video.float().clamp(-1, 1).permute(1, 2, 3, 0) + 1.0) * 127.5).round()
    return rgb.clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def rollout_video(
    stack: ModelStack, image: np.ndarray, actions: Sequence[ActionFrame], *, prompt: str, seed: int
) -> np.ndarray:
    """Stream ``len(actions)`` frames from ``image`` (H, W, 3) with the serving rollout and the
    checkpoint's timesteps; ``actions[1:]`` drive the blocks. Returns (F, H, W, 3) uint8."""
    h, w = image.shape[:2]
    rollout = stack.rollout(height=h, width=w, seed=seed)
    per_block = rollout.frames_per_block
    if (len(actions) - 1) % per_block:
        raise ValueError(f"{len(actions)} frames is not 1 + k·{per_block} (whole blocks)")
    state, first = rollout.start(to_pixels(image), prompt=prompt)
    frames = [first]
    for lo in range(1, len(actions), per_block):
        frames.append(rollout.step(state, list(actions[lo : lo + per_block])))
    return to_uint8(torch.cat(frames, dim=2)[0])


def clip_inputs(
    stack: ModelStack, image: np.ndarray, actions: Sequence[ActionFrame], *, fov_deg: float
) -> tuple[Tensor, Tensor, Tensor]:
    """What a whole clip from ``image`` (H, W, 3) under ``actions`` gives the model: the reference latent
    (1, C, 1, h, w), the grouped camera rays (1, T, 6·stride, H, W) and the I2V channels (1, stride + C,
    T, h, w), with the still latent when the spec has ``i2v_still``."""
    vae, cfg = stack.vae, stack.model.cfg
    h, w = image.shape[:2]
    stride = cfg.vae.temporal_stride
    pixels = to_pixels(image)
    reference = vae.encode(pixels[:, :, None])
    track = actions_to_camera(actions, width=w, height=h, fov_deg=fov_deg, motion=cfg.motion)
    rays = plucker_embedding(track.intrinsics, track.c2w, h, w)  # (F, 6, H, W)
    camera = group_plucker(rays[None], temporal_stride=stride)
    still = i2v_stills(cfg, vae, reference=reference, image=pixels, camera=camera)
    cond = i2v_condition(reference, num_frames=camera.shape[1], temporal_stride=stride, still=still)
    return reference, camera, cond


@torch.no_grad()
def plane_video(
    stack: ModelStack, image: np.ndarray, actions: Sequence[ActionFrame], *, fov_deg: float
) -> np.ndarray:
    """The I2V latent the model reads for every generated frame — the reference seen from the frame's
    commanded camera through the plane (``i2v_warp``), or held still (``i2v_still`` alone) — decoded by
    the stack's VAE, after the reference frame itself: (F, H, W, 3) uint8. Needs ``i2v_still``."""
    cfg = stack.model.cfg
    if not cfg.i2v_still:
        raise ValueError("the plane baseline needs a model whose I2V channels carry the still latent")
    reference, camera, cond = clip_inputs(stack, image, actions, fov_deg=fov_deg)
    latents = stack.model.condition(cond, camera)[:, cfg.vae.temporal_stride :].clone()
    latents[:, :, :1] = reference
    return to_uint8(stack.vae.decode(latents)[0])


@torch.no_grad()
def teacher_video(
    stack: ModelStack,
    image: np.ndarray,
    actions: Sequence[ActionFrame],
    *,
    prompt: str,
    seed: int,
    fov_deg: float,
    steps: int = TEACHER_STEPS,
) -> np.ndarray:
    """The bidirectional model's whole clip of ``len(actions)`` frames from ``image`` (H, W, 3): Euler
    ODE over ``steps`` timesteps shifted by the spec's shift, frame 0 clean (see the module doc).
    ``fov_deg``: the field of view of the data the camera rays describe. Returns (F, H, W, 3) uint8."""
    model, vae, cfg = stack.model, stack.vae, stack.model.cfg
    # 1. Reference latent, camera rays per latent frame, I2V channels, text
    reference, camera, cond = clip_inputs(stack, image, actions, fov_deg=fov_deg)
    t_frames = camera.shape[1]
    text = stack.text_encoder.encode([prompt])
    conditioning = Conditioning(text.tokens, text.mask)

    # 2. Euler ODE over the whole clip; frame 0 is the clean reference (σ = 0, zero velocity)
    def denoise(x: Tensor, t: Tensor) -> Tensor:  # x (1, C, T, h, w), t (1,)
        per_frame = t[:, None].expand(-1, t_frames).clone()
        per_frame[:, 0] = 0.0
        v: Tensor = model(
            x, timesteps=per_frame, cond=cond, camera=camera, conditioning=conditioning, causal=False
        )
        v[:, :, 0] = 0.0
        return v

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, cfg.latent_channels, t_frames, *reference.shape[3:]), generator=generator)
    noise[:, :, :1] = reference
    latents = euler_sample(denoise, noise, euler_timesteps(steps, shift=stack.spec.schedule.shift))
    return to_uint8(vae.decode(latents)[0])  # (F, H, W, 3)


@torch.no_grad()
def vae_reconstruction(stack: ModelStack, frames: np.ndarray) -> np.ndarray:
    """Encode → decode of ``frames`` (F, H, W, 3) uint8 through the stack's VAE (posterior mean)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    return to_uint8(stack.vae.decode(stack.vae.encode(video))[0])
