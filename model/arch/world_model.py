"""The instruction-driven world model: MoE DiT experts + camera encoder + interaction extractor.

Entry points (STYLE.md): :meth:`WorldModel.forward` runs a whole clip for training (block-causal or
bidirectional); :meth:`WorldModel.forward_step` runs one block against a caller-owned
:class:`~worldloop.model.arch.kv_cache.KVCache`; :meth:`commit_block` writes a denoised block's clean
KV (the t = 0 pass) and :meth:`recache` rebuilds the window for a new instruction (sinks protected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worldloop.model.arch.anchor import anchored
from worldloop.model.arch.camera_encoder import CameraEncoder
from worldloop.model.arch.dit import ExpertTransformer, set_attention_backend
from worldloop.model.arch.interaction import InteractionExtractor
from worldloop.model.arch.kv_cache import BlockInputs, CacheLayout, KVCache
from worldloop.model.arch.warp import warp_condition
from worldloop.model.config import ModelConfig


@dataclass(frozen=True)
class InstructionTurns:
    """Several instructions over one clip, each in force from its latent frame on (multi-turn windows
    of the bidirectional model, :meth:`WorldModel.forward`): each turn gets its own interaction tokens
    in the cross-attention context, and a latent frame's tokens see only those of the turn in force
    there (with the scene text, which holds everywhere)."""

    tokens: Tensor  # (B, K, Li, text_encoder_dim): row b's turn k
    mask: Tensor  # (B, K, Li) bool; a turn with no True token is absent (padding of a shorter row)
    frame_turn: Tensor  # (B, T) long: per latent frame, the turn in force there (-1: none issued yet)


@dataclass(frozen=True)
class Conditioning:
    """Encoded text: scene prompt tokens and (optionally) the current instruction's tokens, or, for a
    whole clip, every instruction turn with the latent frames it holds over (never both)."""

    text_tokens: Tensor  # (B, Lt, text_encoder_dim): the text encoder's features
    text_mask: Tensor  # (B, Lt) bool, at least one True per row
    instruction_tokens: Tensor | None = None  # (B, Li, text_encoder_dim)
    instruction_mask: Tensor | None = None  # (B, Li) bool
    turns: InstructionTurns | None = None  # whole-clip forward only (the KV cache holds one instruction)

    def __post_init__(self) -> None:
        if self.turns is not None and self.instruction_tokens is not None:
            raise ValueError("give one instruction (instruction_tokens) or per-frame turns, not both")


class WorldModel(nn.Module):
    """``num_experts`` expert transformers sharing one camera encoder and interaction extractor."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList(ExpertTransformer(cfg) for _ in range(cfg.num_experts))
        self.camera_encoder = CameraEncoder(cfg)
        self.interaction = InteractionExtractor(cfg)
        # A text encoder narrower (or wider) than the experts' text_dim speaks through a learned map.
        self.text_projection = (
            nn.Linear(cfg.text_input_dim, cfg.text_dim) if cfg.text_input_dim is not None else None
        )
        set_attention_backend(self, cfg.attention.value)
        # Heads per worker in a new KV cache: None = all ``cfg.num_heads`` (single device); set by
        # worldloop.model.parallel, where each worker caches every token of its share of the heads.
        self.cache_heads: int | None = None

    # -- experts ------------------------------------------------------------------------------------
    def expert_for(self, timestep: float) -> int:
        """0 = high-noise expert when ``t ≥ boundary·1000`` (inclusive), else 1 (Wan2.2 MoE)."""
        if self.cfg.num_experts == 1:
            return 0
        return 0 if timestep >= self.cfg.boundary * 1000.0 else 1

    def expert(self, index: int) -> ExpertTransformer:
        """The ``index``-th expert transformer (0 = high noise)."""
        module = self.experts[index]
        assert isinstance(module, ExpertTransformer)
        return module

    @property
    def device(self) -> torch.device:
        return self.camera_encoder.out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.camera_encoder.out.weight.dtype

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups for freezing and per-expert learning rates (stages 2–4)."""
        groups = {f"expert{i}": list(e.parameters()) for i, e in enumerate(self.experts)}
        groups["camera"] = list(self.camera_encoder.parameters())
        # The text projection is the text side's adapter: it trains with the interaction extractor.
        text = [] if self.text_projection is None else list(self.text_projection.parameters())
        groups["interaction"] = list(self.interaction.parameters()) + text
        return groups

    # -- conditioning -------------------------------------------------------------------------------
    def _text_features(self, tokens: Tensor) -> Tensor:
        """(B, L, text_encoder_dim) encoder features → (B, L, text_dim) in the model's dtype."""
        tokens = tokens.to(self.dtype)
        return tokens if self.text_projection is None else self.text_projection(tokens)

    def context_tokens(self, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """Scene text padded/truncated to ``text_len`` ⊕ interaction tokens: (B, Lc, text_dim), (B, Lc).

        ``cond`` holds the text encoder's features (``text_encoder_dim`` wide).
        With :attr:`Conditioning.turns` the interaction tokens are every turn's, turn by turn
        (K·``num_interaction_tokens``); :meth:`frame_context_mask` says which of them each frame sees.
        """
        text = self._text_features(cond.text_tokens[:, : self.cfg.text_len])
        mask = cond.text_mask[:, : self.cfg.text_len]
        if not bool(mask[:, 0].all()) and not bool(mask.any(dim=1).all()):
            raise ValueError("every sample needs at least one text token (empty prompt?)")
        pad = self.cfg.text_len - text.shape[1]
        if pad:
            text = torch.cat([text, text.new_zeros(text.shape[0], pad, text.shape[2])], dim=1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)
        b = text.shape[0]
        if cond.turns is None:
            instruction = cond.instruction_tokens
            inter, inter_mask = self.interaction(
                None if instruction is None else self._text_features(instruction),
                cond.instruction_mask,
                batch=b,
            )
        else:  # one extractor call over every (row, turn): (B·K, Li, d) → (B, K·n, d)
            turns = cond.turns.tokens
            inter, inter_mask = self.interaction(
                self._text_features(turns.flatten(0, 1)),
                cond.turns.mask.flatten(0, 1),
                batch=b * turns.shape[1],
            )
            inter, inter_mask = inter.unflatten(0, (b, -1)).flatten(1, 2), inter_mask.reshape(b, -1)
        tokens = torch.cat([text, inter.to(self.dtype)], dim=1)
        return tokens, torch.cat([mask, inter_mask], dim=1)

    def frame_context_mask(
        self, cond: Conditioning, context_mask: Tensor, *, num_frames: int
    ) -> Tensor | None:
        """Which context tokens each latent frame's tokens see: (B, T, Lc) bool, or ``None`` when every
        frame sees all of ``context_mask`` (B, Lc) (no :attr:`Conditioning.turns`).

        The scene text holds over the whole clip; turn k's interaction tokens only over the frames
        ``frame_turn`` gives it. Each row of the result has a True (the text's), so no query's softmax
        is empty — a frame before the first turn sees the scene text alone, as the causal student's
        blocks before it do.
        """
        turns = cond.turns
        if turns is None:
            return None
        b, k = turns.tokens.shape[:2]
        if turns.frame_turn.shape != (b, num_frames):
            raise ValueError(
                f"turns.frame_turn is {tuple(turns.frame_turn.shape)}: the clip needs one turn index "
                f"per latent frame, (B, T) = {(b, num_frames)}"
            )
        n = self.cfg.num_interaction_tokens
        slot = torch.arange(k, device=context_mask.device).repeat_interleave(n)  # (K·n,) turn of each token
        own = turns.frame_turn.to(context_mask.device)[:, :, None] == slot  # (B, T, K·n)
        scene = own.new_ones(b, num_frames, context_mask.shape[1] - k * n)  # (B, T, text_len)
        return context_mask[:, None, :] & torch.cat([scene, own], dim=2)

    def block_mask(self, num_frames: int, tokens_per_frame: int) -> Tensor:
        """Block-sparse causal mask (T·P, T·P) bool: sinks + window + own block (DESIGN.md §5.4)."""
        layout = self.layout(tokens_per_frame)
        blocks = torch.tensor([layout.block_of_frame(f) for f in range(num_frames)])
        q, k = blocks[:, None], blocks[None, :]
        allowed = (k <= q) & ((k < layout.num_sink_blocks) | (q - k <= layout.window_blocks))
        return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)

    def layout(self, tokens_per_frame: int) -> CacheLayout:
        c = self.cfg.causal
        return CacheLayout(tokens_per_frame, c.block_frames, c.num_sink_blocks, c.window_blocks)

    # -- training -----------------------------------------------------------------------------------
    def forward(
        self,
        latents: Tensor,
        *,
        timesteps: Tensor,
        cond: Tensor,
        camera: Tensor,
        conditioning: Conditioning,
        causal: bool = True,
    ) -> Tensor:
        """Velocity for a whole clip.

        Args:
            latents: (B, C, T, h, w) noisy latents, T = 1 + k·block_frames when ``causal``.
            timesteps: (B, T) per latent frame in [0, 1000]; the sample's largest picks its expert.
            cond: (B, stride + C, T, h, w) I2V mask ⊕ reference latents (see :func:`i2v_condition`).
            camera: (B, T, 6·stride, H, W) grouped Plücker rays.
            conditioning: scene text and instruction; with ``turns``, each latent frame's tokens
                cross-attend to the turn in force there (``turns.frame_turn`` (B, T)).
            causal: block-causal sink/window mask (student) or full attention (teacher).
        Returns:
            (B, C, T, h, w) predicted velocity ε − x0.
        """
        b, _, t, h, w = latents.shape
        dtype = self.dtype  # inputs arrive in fp32 from the data path; bf16 training runs bf16 weights
        seen = self.condition(cond, camera)
        x = torch.cat([latents.to(dtype), seen.to(dtype)], dim=1)
        cam = self.camera_encoder(camera.to(dtype))
        ctx, ctx_mask = self.context_tokens(conditioning)
        frame_mask = self.frame_context_mask(conditioning, ctx_mask, num_frames=t)  # (B, T, Lc) with turns
        tpf = cam.shape[1] // t
        if causal and (t - 1) % self.cfg.causal.block_frames:
            raise ValueError(f"{t} latent frames is not 1 + k·{self.cfg.causal.block_frames} (block layout)")
        mask = self.block_mask(t, tpf).to(latents.device) if causal else None
        routes = [self.expert_for(v) for v in timesteps.amax(dim=1).tolist()]
        out = torch.empty_like(latents)
        # In training every expert runs, on an empty batch when no sample chose it: each data-parallel
        # rank then builds the same graph and its gradient hooks fire in the same order, which
        # ZeRO-1/2 bucketing relies on (with a per-rank subset of experts the ranks disagree).
        experts = range(self.cfg.num_experts) if torch.is_grad_enabled() else sorted(set(routes))
        for e in experts:
            chosen = [i for i, r in enumerate(routes) if r == e]
            idx = torch.tensor(chosen, dtype=torch.long, device=latents.device)
            expert = self.expert(e)
            y, _ = expert(
                x[idx],
                timesteps=timesteps[idx],
                frame_start=0,
                context_kv=expert.context_kv(ctx[idx]),
                context_mask=ctx_mask[idx],
                frame_context_mask=None if frame_mask is None else frame_mask[idx],
                camera_tokens=cam[idx],
                attn_mask=mask,
            )
            out[idx] = y.to(out.dtype)
        return self.anchor(out, latents, seen, timesteps)

    # -- streaming ----------------------------------------------------------------------------------
    def new_cache(self, *, batch: int, height: int, width: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch`` streams of ``height × width`` video."""
        param = next(self.parameters())
        return KVCache.allocate(
            self.layout(self.cfg.tokens_per_frame(height, width)),
            num_experts=self.cfg.num_experts,
            num_layers=self.cfg.num_layers,
            batch=batch,
            num_heads=self.cfg.num_heads if self.cache_heads is None else self.cache_heads,
            head_dim=self.cfg.head_dim,
            dtype=dtype or param.dtype,
            device=param.device,
        )

    def set_context(self, cache: KVCache, conditioning: Conditioning) -> None:
        """Compute every expert's cross-attention K/V for ``conditioning`` and store them in ``cache``."""
        if conditioning.turns is not None:
            raise ValueError(
                "the KV cache holds one instruction at a time: set_context with the first and recache "
                "at each later turn (what Rollout and self_forcing_rollout do), not per-frame turns"
            )
        ctx, ctx_mask = self.context_tokens(conditioning)
        for i in range(self.cfg.num_experts):
            kv = self.expert(i).context_kv(ctx)
            cache.set_context(i, [k for k, _ in kv], [v for _, v in kv], ctx_mask)

    def forward_step(
        self,
        latents: Tensor,
        *,
        timesteps: Tensor,
        cond: Tensor,
        camera: Tensor,
        block_index: int,
        cache: KVCache,
        expert: int,
        update_cache: bool = False,
        camera_tokens: Tensor | None = None,
        seen_cond: Tensor | None = None,
    ) -> Tensor:
        """Velocity for one block, attending to the cached sinks + window.

        Args:
            latents: (B, C, f, h, w) with f = 1 for block 0, else ``block_frames``.
            timesteps: (B, f); cond: (B, stride + C, f, h, w); camera: (B, f, 6·stride, H, W).
            expert: which expert runs (host int, see :meth:`expert_for`).
            update_cache: write this block's K/V into the cache (the clean t = 0 pass).
            camera_tokens: ``encode_camera(camera)`` when the caller already has it (every denoising
                step of a block shares the camera: encode it once).
            seen_cond: ``condition(cond, camera)`` when the caller already has it (likewise).
        """
        layout = cache.layout
        if latents.shape[2] != layout.frames_in_block(block_index):
            raise ValueError(f"block {block_index} has {layout.frames_in_block(block_index)} latent frames")
        kv = cache.experts[expert]
        if not kv.context_keys or cache.context_mask is None:
            raise ValueError("cache has no context: call set_context(cache, conditioning) first")
        visible = cache.visible_index(expert, block_index)
        past = [cache.past(expert, layer, visible) for layer in range(self.cfg.num_layers)]
        seen = self.condition(cond, camera) if seen_cond is None else seen_cond
        x = torch.cat([latents, seen.to(latents.dtype)], dim=1).to(self.dtype)
        y, new_kv = self.expert(expert)(
            x,
            timesteps=timesteps,
            frame_start=layout.frame_start(block_index),
            context_kv=list(zip(kv.context_keys, kv.context_values, strict=True)),
            context_mask=cache.context_mask,
            camera_tokens=self.encode_camera(camera) if camera_tokens is None else camera_tokens,
            past=past,
        )
        if update_cache:
            cache.write_block(expert, block_index, new_kv)
        return self.anchor(y.to(latents.dtype), latents, seen, timesteps)

    def anchor(self, raw: Tensor, latents: Tensor, seen: Tensor, timesteps: Tensor) -> Tensor:
        """The velocity from the experts' output ``raw``: itself, or with ``i2v_anchor`` plus the prior
        around the I2V latent the experts read (:mod:`~worldloop.model.arch.anchor`)."""
        if self.cfg.i2v_anchor is None:
            return raw
        return anchored(
            raw, latents, seen, timesteps, stride=self.cfg.vae.temporal_stride, std=self.cfg.i2v_anchor
        )

    def condition(self, cond: Tensor, camera: Tensor) -> Tensor:
        """The I2V channels the experts read: ``cond`` as given, or with ``i2v_warp`` its still latents
        moved by each frame's camera (:func:`~worldloop.model.arch.warp.warp_condition`)."""
        if self.cfg.i2v_warp is None or self.cfg.i2v_warp_pixels:
            return cond
        return warp_condition(
            cond, camera, temporal_stride=self.cfg.vae.temporal_stride, depth=self.cfg.i2v_warp
        )

    def encode_camera(self, camera: Tensor) -> Tensor:
        """Grouped Plücker rays (B, f, 6·stride, H, W) → camera tokens (B, f·P, dim), model dtype."""
        return self.camera_encoder(camera.to(self.dtype))

    def commit_block(
        self,
        cache: KVCache,
        *,
        block_index: int,
        latents: Tensor,
        cond: Tensor,
        camera: Tensor,
        camera_tokens: Tensor | None = None,
    ) -> None:
        """The clean pass: run ``latents`` at t = 0 through every expert, writing their K/V (§5.4)."""
        t0 = latents.new_zeros(latents.shape[0], latents.shape[2])
        if camera_tokens is None:
            camera_tokens = self.encode_camera(camera)
        seen = self.condition(cond, camera)  # every expert reads the same I2V channels
        for e in range(self.cfg.num_experts):
            self.forward_step(
                latents,
                timesteps=t0,
                cond=cond,
                camera=camera,
                block_index=block_index,
                cache=cache,
                expert=e,
                update_cache=True,
                camera_tokens=camera_tokens,
                seen_cond=seen,
            )
        cache.remember(block_index, BlockInputs(latents=latents, cond=cond, camera=camera))

    def recache(
        self, cache: KVCache, conditioning: Conditioning, *, commit: Callable[..., None] | None = None
    ) -> int:
        """New instruction: replace cross-attention K/V and recompute the window's self-attention K/V.

        Sink blocks keep the K/V they were written with. Returns the number of blocks recomputed.
        The cross-attention context follows grad mode (training trains it, as :meth:`set_context`); the
        recomputed window is detached, as every committed block is. ``commit`` recomputes each block in
        place of :meth:`commit_block`, with its keywords (a compiled rollout's clean pass).
        """
        self.set_context(cache, conditioning)
        cache.invalidate_window()
        blocks = sorted(cache.history)
        commit = self.commit_block if commit is None else commit
        with torch.no_grad():
            for b in blocks:
                item = cache.history[b]
                commit(cache, block_index=b, latents=item.latents, cond=item.cond, camera=item.camera)
        return len(blocks)


def i2v_condition(
    reference: Tensor,
    *,
    num_frames: int,
    temporal_stride: int,
    frame_start: int = 0,
    still: Tensor | None = None,
) -> Tensor:
    """Wan I2V channels for latent frames ``frame_start ..``: (B, stride + C, num_frames, h, w).

    ``reference`` (B, C, 1, h, w) is the image's latent. Frame 0 carries it with a mask of ones (all
    ``stride`` video frames known); every other frame carries zeros, or with ``still`` (B, C, 1, h, w)
    (:meth:`~worldloop.model.vae.autoencoder.CausalVideoVAE.still_latent`, ``ModelConfig.i2v_still``)
    the latent of the image held still, its mask still zero. ``still`` may also hold one latent per
    frame (``ModelConfig.i2v_warp_pixels``): (B, C, num_frames, h, w) for exactly these frames, or
    (B, C, T, h, w) for the clip's frames from 0, of which ``frame_start ..`` are taken.
    """
    b, c, _, h, w = reference.shape
    mask = reference.new_zeros(b, temporal_stride, num_frames, h, w)
    y = reference.new_zeros(b, c, num_frames, h, w)
    if still is not None:
        if still.shape[2] not in (1, num_frames):  # the whole clip's: take these frames
            still = still[:, :, frame_start : frame_start + num_frames]
        one_frame = still[:, :, :1]
        if one_frame.shape != reference.shape or still.shape[2] not in (1, num_frames):
            raise ValueError(
                f"still latent {tuple(still.shape)} must match the reference {tuple(reference.shape)} "
                f"(one frame, or one per frame of the {num_frames} from frame {frame_start})"
            )
        y[:] = still.to(y.dtype)
    if frame_start == 0:
        mask[:, :, 0] = 1.0
        y[:, :, 0] = reference[:, :, 0]
    return torch.cat([mask, y], dim=1)
