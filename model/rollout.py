"""Block-by-block generation from an image, actions and instructions — the one rollout that stage 3/4
training and the serving engine both run (STYLE.md "one rollout for training and serving").

A stream starts from a reference image: its latent is block 0 (the sink and the camera origin). Each
:meth:`Rollout.step` takes the actions of ``block_frames · 4`` video frames, denoises one block with
the few-step, expert-aligned schedule (DESIGN.md §5.5), writes the clean K/V (t = 0 pass) and decodes
the block's frames with the VAE's streaming cache. A changed instruction triggers :meth:`WorldModel.recache`.
Each block is denoised by :func:`~worldloop.model.block_sampler.denoise_block`, the sampler Self-Forcing
training runs too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.dit import compile_blocks
from worldloop.model.arch.kv_cache import KVCache
from worldloop.model.arch.warp import i2v_stills
from worldloop.model.arch.world_model import Conditioning, WorldModel, i2v_condition
from worldloop.model.block_sampler import BlockNoise, denoise_block
from worldloop.model.camera.actions import ActionFrame, CameraState
from worldloop.model.camera.plucker import actions_to_camera, plucker_embedding
from worldloop.model.compiled_step import CompiledStep
from worldloop.model.config import CompileMode
from worldloop.model.diffusion.sampler import FewStepScheduler
from worldloop.model.diffusion.schedule import few_step_timesteps
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.causal_conv import DecodeCache


@dataclass
class StreamState:
    """Everything one stream carries between blocks (bounded: the KV cache has fixed size)."""

    cache: KVCache
    decode_cache: DecodeCache
    reference: Tensor  # (B, C, 1, h, w) image latent
    camera: CameraState  # camera after the last generated frame
    prompt: str
    instruction: str | None
    next_block: int = 1
    recaches: int = 0
    still: Tensor | None = None  # (B, C, 1, h, w) the image held still (ModelConfig.i2v_still), else None
    image: Tensor | None = None  # (B, 3, H, W) the image, when each block's views are warped from it


class Rollout:
    """Generate video block by block. ``model``, ``vae`` and ``text_encoder`` are used as given (eval)."""

    def __init__(
        self,
        model: WorldModel,
        *,
        vae: CausalVideoVAE,
        text_encoder: TextEncoder,
        height: int,
        width: int,
        timesteps: Sequence[float] | None = None,
        shift: float = 5.0,
        generator: torch.Generator | None = None,
        compile: CompileMode = "off",
        compile_backend: str = "inductor",
    ) -> None:
        """``compile="blocks"`` compiles ``model``'s DiT blocks in place (every user of the model gets
        them); ``"step"`` keeps the model as it is and runs each block's denoising steps and clean pass
        through one compiled callable of this rollout's own (see :data:`CompileMode`).
        ``compile_backend`` is ``torch.compile``'s (``"eager"``: trace only, for quick checks)."""
        cfg = model.cfg
        if text_encoder.dim != cfg.text_encoder_dim:
            raise ValueError(
                f"text encoder width {text_encoder.dim} != the model's text input {cfg.text_encoder_dim}"
            )
        cfg.tokens_per_frame(height, width)  # validates the size
        self.model, self.vae, self.text_encoder = model, vae, text_encoder
        self.height, self.width = height, width
        boundary = cfg.boundary if cfg.num_experts == 2 else None
        self.scheduler = FewStepScheduler(timesteps or few_step_timesteps(4, shift=shift, boundary=boundary))
        self.noise = BlockNoise(generator)
        self.compiled: CompiledStep | None = None
        if compile == "blocks":
            compile_blocks(model, backend=compile_backend)
        elif compile == "step":
            self.compiled = CompiledStep(model, backend=compile_backend)
        elif compile != "off":
            raise ValueError(f"compile must be 'off', 'blocks' or 'step', got {compile!r}")

    @property
    def timesteps(self) -> list[float]:
        """The few-step schedule every block runs."""
        return self.scheduler.timesteps

    @property
    def generator(self) -> torch.Generator | None:
        """Where block noise comes from (None: torch's global generator); serving sets it per stream."""
        return self.noise.generator

    @generator.setter
    def generator(self, generator: torch.Generator | None) -> None:
        self.noise = BlockNoise(generator)

    @property
    def frames_per_block(self) -> int:
        """Video frames produced (and actions consumed) per step."""
        return self.model.cfg.causal.block_frames * self.model.cfg.vae.temporal_stride

    def conditioning(self, prompt: str, instruction: str | None, *, batch: int) -> Conditioning:
        text = self.text_encoder.encode([prompt] * batch)
        device, dtype = self.model.device, self.model.dtype  # text encoders return fp32 on the host
        if instruction is None:
            return Conditioning(text.tokens.to(device, dtype), text.mask.to(device))
        inst = self.text_encoder.encode([instruction] * batch)
        return Conditioning(
            text.tokens.to(device, dtype),
            text.mask.to(device),
            inst.tokens.to(device, dtype),
            inst.mask.to(device),
        )

    def _camera(self, poses: Tensor, intrinsics: Tensor, batch: int) -> Tensor:
        device = self.model.device
        # On the model's device: at 480p a block's rays are 115 MB of float32 (~0.3 s on 2 CPU cores).
        rays = plucker_embedding(intrinsics.to(device), poses.to(device), self.height, self.width)
        stride = self.model.cfg.vae.temporal_stride
        if rays.shape[0] == 1:
            grouped = group_plucker(rays[None], temporal_stride=stride)  # (1, 1, 6·stride, H, W)
        else:
            grouped = rays.reshape(1, -1, 6 * stride, self.height, self.width)
        return grouped.expand(batch, -1, -1, -1, -1).to(device=self.model.device, dtype=self.model.dtype)

    @torch.no_grad()
    def start(
        self, image: Tensor, *, prompt: str, instruction: str | None = None
    ) -> tuple[StreamState, Tensor]:
        """Begin a stream from ``image`` (B, 3, H, W) in [-1, 1].

        Returns the stream state and frame 0 as video, (B, 3, 1, H, W) in [-1, 1].
        """
        if image.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"image is {tuple(image.shape[-2:])}, rollout expects {(self.height, self.width)}"
            )
        b = image.shape[0]
        vae_weight = next(self.vae.parameters())
        image = image.to(device=vae_weight.device, dtype=vae_weight.dtype)  # e.g. fp32 host pixels
        reference = self.vae.encode(image[:, :, None])  # (B, C, 1, h, w)
        pixels = self.model.cfg.i2v_warp_pixels  # each block's I2V views come from the image itself
        still = self.vae.still_latent(reference) if self.model.cfg.i2v_still and not pixels else None
        cache = self.model.new_cache(batch=b, height=self.height, width=self.width, dtype=self.model.dtype)
        self.model.set_context(cache, self.conditioning(prompt, instruction, batch=b))
        track = actions_to_camera(
            [ActionFrame()], width=self.width, height=self.height, fov_deg=self.model.cfg.fov_deg
        )
        camera = self._camera(track.c2w, track.intrinsics, b)
        cond = i2v_condition(reference, num_frames=1, temporal_stride=self.model.cfg.vae.temporal_stride)
        self.model.commit_block(cache, block_index=0, latents=reference, cond=cond, camera=camera)
        decode_cache = self.vae.new_decode_cache()
        first = self.vae.decode_step(reference, decode_cache)
        state = StreamState(
            cache,
            decode_cache,
            reference,
            track.end,
            prompt,
            instruction,
            still=still,
            image=image if pixels else None,
        )
        return state, first.clamp(-1, 1)

    @torch.no_grad()
    def stills(self, state: StreamState, camera: Tensor) -> Tensor | None:
        """What the I2V channels of ``state``'s stream carry after frame 0 for frames with ``camera``
        (B, t, 6·stride, H, W): its still latent, or with ``i2v_warp_pixels`` their views of the image
        (B, C, t, h, w) — a block's, or a whole path's for a training rollout that replays the stream."""
        if state.image is None:
            return state.still
        return i2v_stills(
            self.model.cfg, self.vae, reference=state.reference, image=state.image, camera=camera
        )

    @torch.no_grad()
    def step(
        self, state: StreamState, actions: Sequence[ActionFrame], *, instruction: str | None = None
    ) -> Tensor:
        """Generate the next block. ``actions`` covers its video frames; a new ``instruction`` recaches.

        Returns (B, 3, frames_per_block, H, W) in [-1, 1].
        """
        return self.decode(state, self.denoise(state, actions, instruction=instruction))

    @torch.no_grad()
    def decode(self, state: StreamState, latents: Tensor) -> Tensor:
        """The VAE's streaming decode of a block's clean latents → (B, 3, frames, H, W) in [-1, 1].

        Separate from :meth:`denoise` so servers can time it, and so sequence-parallel ranks other
        than the first can skip it (every rank holds the same latents).
        """
        return self.vae.decode_step(latents, state.decode_cache).clamp(-1, 1)

    @torch.no_grad()
    def denoise(
        self, state: StreamState, actions: Sequence[ActionFrame], *, instruction: str | None = None
    ) -> Tensor:
        """The next block's clean latents (B, C, block_frames, h, w), its K/V committed to the cache;
        decode them with :meth:`decode` (in order: the decoder's cache is causal)."""
        if len(actions) != self.frames_per_block:
            raise ValueError(f"need {self.frames_per_block} actions per block, got {len(actions)}")
        cfg, b = self.model.cfg, state.reference.shape[0]
        if instruction is not None and instruction != state.instruction:
            state.instruction = instruction
            conditioning = self.conditioning(state.prompt, instruction, batch=b)
            commit = (
                None if self.compiled is None else partial(self.compiled.commit, scheduler=self.scheduler)
            )
            self.model.recache(state.cache, conditioning, commit=commit)
            state.recaches += 1
        track = actions_to_camera(
            actions,
            width=self.width,
            height=self.height,
            fov_deg=cfg.fov_deg,
            motion=cfg.motion,
            start=state.camera,
        )
        camera = self._camera(track.c2w, track.intrinsics, b)
        block, f = state.next_block, cfg.causal.block_frames
        frame_start = state.cache.layout.frame_start(block)
        ref = state.reference
        cond = i2v_condition(
            ref,
            num_frames=f,
            temporal_stride=cfg.vae.temporal_stride,
            frame_start=frame_start,
            still=self.stills(state, camera),
        )
        shape = (b, cfg.latent_channels, f, ref.shape[3], ref.shape[4])
        camera_tokens = self.model.encode_camera(camera)  # shared by every step and the clean pass
        x0 = denoise_block(
            self.model,
            scheduler=self.scheduler,
            noise=lambda: self.noise(shape, ref),
            cond=cond,
            camera=camera,
            block_index=block,
            cache=state.cache,
            camera_tokens=camera_tokens,
            compiled=self.compiled,
        )
        if self.compiled is None:
            self.model.commit_block(
                state.cache,
                block_index=block,
                latents=x0,
                cond=cond,
                camera=camera,
                camera_tokens=camera_tokens,
            )
        else:
            self.compiled.commit(
                state.cache,
                scheduler=self.scheduler,
                block_index=block,
                latents=x0,
                cond=cond,
                camera=camera,
                camera_tokens=camera_tokens,
            )
        state.camera, state.next_block = track.end, block + 1
        return x0
