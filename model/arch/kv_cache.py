"""The caller-owned KV cache of block-causal generation: sink blocks forever + a rolling window.

Layout (DESIGN.md §5.4, paper §"Self-attention KV cache"): block 0 is the reference latent frame (the
camera origin); blocks ``1 .. num_sink_blocks-1`` may join it as extra sinks; every later block goes into
one of ``window_blocks`` ring slots. Buffers are allocated once, so memory is the same at block 10 and
block 10 000. Keys are stored already rotated (absolute RoPE positions), which makes slot order
irrelevant to attention.

The cache also keeps, per window block, the clean inputs that produced it, so that **recache** (a new
instruction) can recompute the window with the new context while the sinks stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class CacheLayout:
    """Token geometry of the cache; all host integers."""

    tokens_per_frame: int
    block_frames: int
    num_sink_blocks: int
    window_blocks: int

    def frames_in_block(self, block: int) -> int:
        return 1 if block == 0 else self.block_frames

    def frame_start(self, block: int) -> int:
        """First latent frame of ``block`` (block 0 is frame 0 alone)."""
        return 0 if block == 0 else 1 + (block - 1) * self.block_frames

    def block_of_frame(self, frame: int) -> int:
        return 0 if frame == 0 else 1 + (frame - 1) // self.block_frames

    @property
    def block_tokens(self) -> int:
        return self.block_frames * self.tokens_per_frame

    @property
    def sink_tokens(self) -> int:
        return self.tokens_per_frame + (self.num_sink_blocks - 1) * self.block_tokens

    @property
    def capacity(self) -> int:
        return self.sink_tokens + self.window_blocks * self.block_tokens

    def slot(self, block: int) -> tuple[int, int]:
        """Token range ``[start, end)`` of the buffer where ``block`` lives."""
        if block < self.num_sink_blocks:
            start = 0 if block == 0 else self.tokens_per_frame + (block - 1) * self.block_tokens
        else:
            ring = (block - self.num_sink_blocks) % self.window_blocks
            start = self.sink_tokens + ring * self.block_tokens
        return start, start + self.frames_in_block(block) * self.tokens_per_frame

    def attends(self, query_block: int, key_block: int) -> bool:
        """The block-sparse rule: sinks, the ``window_blocks`` blocks before, and itself."""
        if key_block > query_block:
            return False
        return key_block < self.num_sink_blocks or query_block - key_block <= self.window_blocks


@dataclass
class BlockInputs:
    """Clean inputs of one cached block, kept so recache can recompute it with a new context."""

    latents: Tensor  # (B, C, f, h, w) clean latents
    cond: Tensor  # (B, C_cond, f, h, w) I2V mask + reference channels
    camera: Tensor  # (B, f, 6·stride, H, W) grouped Plücker rays


@dataclass
class ExpertKV:
    """One expert's buffers: self-attention K/V per layer and the cross-attention context K/V."""

    keys: Tensor  # (layers, B, capacity, H, Dh)
    values: Tensor
    context_keys: list[Tensor] = field(default_factory=list)  # per layer (B, Lc, H, Dh)
    context_values: list[Tensor] = field(default_factory=list)


@dataclass
class KVCache:
    """Everything a causal stream remembers. Created by :meth:`WorldModel.new_cache`; owned by the caller."""

    layout: CacheLayout
    experts: list[ExpertKV]
    context_mask: Tensor | None = None  # (B, Lc) bool
    # which block each slot range holds and whether its K/V are current, per expert (host state)
    slot_blocks: list[dict[int, int]] = field(default_factory=list)
    history: dict[int, BlockInputs] = field(default_factory=dict)

    @classmethod
    def allocate(
        cls,
        layout: CacheLayout,
        *,
        num_experts: int,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (num_layers, batch, layout.capacity, num_heads, head_dim)
        experts = [
            ExpertKV(
                keys=torch.zeros(shape, dtype=dtype, device=device),
                values=torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(num_experts)
        ]
        return cls(layout=layout, experts=experts, slot_blocks=[{} for _ in range(num_experts)])

    # -- self-attention -----------------------------------------------------------------------------
    def visible_index(self, expert: int, query_block: int) -> Tensor | int:
        """Cached tokens ``query_block`` may attend to: a prefix length when contiguous, else indices."""
        ranges = []
        for start, block in sorted(self.slot_blocks[expert].items()):
            if block != query_block and self.layout.attends(query_block, block):
                ranges.append((start, start + (self.layout.slot(block)[1] - self.layout.slot(block)[0])))
        if not ranges:
            return 0
        contiguous = ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        if contiguous:
            return ranges[-1][1]
        return torch.cat([torch.arange(a, b) for a, b in ranges])

    def visible_mask(self, expert: int, query_block: int) -> Tensor | None:
        """The cached tokens ``query_block`` may attend to as a mask over the whole buffer: (capacity,)
        bool on the buffer's device, or ``None`` when that is every token (a full cache: every block
        from the window's filling on, until a recache empties the window).

        With it a reader takes the buffer at its fixed size instead of :meth:`visible_index`'s
        length, which changes while the cache fills: what compiled steps need for static shapes.
        """
        visible = self.visible_index(expert, query_block)
        if isinstance(visible, int) and visible == self.layout.capacity:
            return None
        mask = torch.zeros(self.layout.capacity, dtype=torch.bool)
        if isinstance(visible, int):
            mask[:visible] = True
        else:
            mask[visible] = True
        return mask.to(self.experts[expert].keys.device)

    def past(self, expert: int, layer: int, visible: Tensor | int) -> tuple[Tensor, Tensor] | None:
        """Cached (k, v) of ``layer`` restricted to ``visible`` (see :meth:`visible_index`)."""
        kv = self.experts[expert]
        if isinstance(visible, int):
            if visible == 0:
                return None
            return kv.keys[layer, :, :visible], kv.values[layer, :, :visible]
        idx = visible.to(kv.keys.device)
        return kv.keys[layer].index_select(1, idx), kv.values[layer].index_select(1, idx)

    def write(self, expert: int, block: int, layer: int, k: Tensor, v: Tensor) -> None:
        """Store ``block``'s rotated keys/values (B, L, H, Dh) of ``layer`` in its slot."""
        start, end = self.layout.slot(block)
        kv = self.experts[expert]
        kv.keys[layer, :, start:end] = k
        kv.values[layer, :, start:end] = v
        if layer == kv.keys.shape[0] - 1:
            slots = self.slot_blocks[expert]
            slots[start] = block

    def write_block(self, expert: int, block: int, kv: list[tuple[Tensor, Tensor]]) -> None:
        """Store ``block``'s rotated keys/values of every layer, ``kv[layer]`` = (k, v) (B, L, H, Dh)."""
        for layer, (k, v) in enumerate(kv):
            self.write(expert, block, layer, k, v)

    def invalidate_window(self) -> None:
        """Forget which window blocks are current (recache rewrites them); sinks stay."""
        for slots in self.slot_blocks:
            for start in [s for s, b in slots.items() if b >= self.layout.num_sink_blocks]:
                del slots[start]

    def remember(self, block: int, inputs: BlockInputs) -> None:
        """Keep ``block``'s clean inputs while it is in the window (bounded: evicted ones are dropped)."""
        if block < self.layout.num_sink_blocks:
            return
        self.history[block] = inputs
        oldest = block - self.layout.window_blocks
        for old in [b for b in self.history if b <= oldest]:
            del self.history[old]

    # -- cross-attention ----------------------------------------------------------------------------
    def set_context(self, expert: int, keys: list[Tensor], values: list[Tensor], mask: Tensor) -> None:
        self.experts[expert].context_keys = keys
        self.experts[expert].context_values = values
        self.context_mask = mask

    def nbytes(self) -> int:
        """Bytes held by every tensor in the cache (sinks, window, context, recache history)."""
        total = 0
        for kv in self.experts:
            total += kv.keys.nbytes + kv.values.nbytes
            total += sum(t.nbytes for t in kv.context_keys) + sum(t.nbytes for t in kv.context_values)
        for item in self.history.values():
            total += item.latents.nbytes + item.cond.nbytes + item.camera.nbytes
        return total
