"""World-model configuration and presets (DESIGN.md §5.1; issue 3 item 1).

Presets are functions returning frozen pydantic configs: :func:`tiny` (CPU tests and the demo),
:func:`small` (Wan 1.3B dims, one GPU) and :func:`a14b` (Wan2.2 I2V-A14B dims: two ~14B experts).
Everything derived — head dim, input channels, tokens per latent frame, cache lengths, parameter
counts — is a property computed here, never a literal repeated elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worldloop.model.camera.actions import CameraMotion
from worldloop.model.vae.config import VAEConfig, tiny_vae, wan_vae


class AttentionBackend(str, Enum):
    """Which attention kernel :func:`worldloop.model.arch.attention.attend` runs; a plain string in
    configs (``"sdpa"``)."""

    sdpa = "sdpa"  # torch.nn.functional.scaled_dot_product_attention: any device, dtype, mask
    sage = "sage"  # sageattention.sageattn: CUDA, fp16/bf16, head dim 64/96/128, no mask; else ValueError
    auto = "auto"  # sage when usable for these inputs, otherwise sdpa (silently)


CompileMode = Literal["off", "blocks", "step"]
"""How a rollout runs the DiT: eagerly (``off``); each DiT block ``torch.compile``d (``blocks``, regional,
:func:`~worldloop.model.arch.dit.compile_blocks`); or each block's whole denoising step as one compiled
callable, CUDA graphs on CUDA (``step``, :class:`~worldloop.model.compiled_step.CompiledStep`)."""


class CausalConfig(BaseModel):
    """Block-causal generation (DESIGN.md §5.4): a sink block kept forever plus a rolling window.

    Latent frame 0 is the reference image and forms block 0 on its own; later blocks hold
    ``block_frames`` latent frames. A query block attends to the first ``num_sink_blocks`` blocks, the
    ``window_blocks`` blocks just before it, and itself (bidirectionally inside the block).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_frames: int = Field(3, ge=1, description="Latent frames per generated block.")
    num_sink_blocks: int = Field(1, ge=1, description="Blocks kept in the cache forever (block 0 = image).")
    window_blocks: int = Field(3, ge=1, description="Most recent non-sink blocks kept in the cache.")


class ModelConfig(BaseModel):
    """Architecture of the instruction-driven world model (a Wan2.x-style I2V DiT with MoE experts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Preset name, recorded with checkpoints.")
    dim: int = Field(gt=0, description="Transformer width.")
    ffn_dim: int = Field(gt=0, description="Hidden width of each feed-forward layer.")
    num_heads: int = Field(gt=0, description="Attention heads (dim / num_heads = head dim).")
    num_layers: int = Field(gt=0, description="Transformer blocks per expert.")
    num_experts: int = Field(2, ge=1, le=2, description="1, or 2 for high-/low-noise MoE (Wan2.2).")
    boundary: float = Field(
        0.900, gt=0.0, lt=1.0, description="High-noise expert when t >= boundary * 1000 (I2V: 0.900)."
    )
    patch_size: tuple[int, int, int] = Field((1, 2, 2), description="Latent patch (t, h, w) per token.")
    text_dim: int = Field(gt=0, description="Width of the text features the experts embed (umT5: 4096).")
    text_input_dim: int | None = Field(
        None,
        gt=0,
        description="Width of the text encoder's features when it differs from text_dim: a learned "
        "projection maps them to text_dim (e.g. the offline MiniLM, 384 wide, before a 4096-wide model).",
    )
    text_len: int = Field(gt=0, description="Maximum text tokens in the cross-attention context.")
    num_interaction_tokens: int = Field(
        8, ge=0, description="Interaction embeddings appended to the context (DESIGN.md §5.3)."
    )
    freq_dim: int = Field(256, gt=0, description="Sinusoidal timestep embedding width.")
    camera_dim: int = Field(gt=0, description="Hidden width of the camera (Plücker) encoder.")
    qk_norm: bool = Field(True, description="RMS-normalise queries and keys (Wan).")
    eps: float = Field(1e-6, gt=0.0, description="Normalisation epsilon.")
    rope_theta: float = Field(10000.0, gt=0.0, description="RoPE base.")
    attention: AttentionBackend = Field(AttentionBackend.sdpa, description="Attention kernel.")
    causal: CausalConfig = Field(default_factory=CausalConfig, description="Sink + window layout.")
    vae: VAEConfig = Field(description="The video VAE whose latents the model denoises.")
    i2v_still: bool = Field(
        False,
        description="I2V channels of latent frames >= 1 carry the still latent (the latent a video "
        "holding the reference image still would have, CausalVideoVAE.still_latent) instead of zeros: "
        "the model predicts the change from a still scene. False: Wan's I2V layout (load Wan weights).",
    )
    i2v_warp: float | None = Field(
        None,
        gt=0.0,
        description="With i2v_still: each generated frame's still latent is the reference seen from that "
        "frame's camera through a plane this far (world units) from the reference camera "
        "(worldloop.model.arch.warp). None: the reference held still.",
    )
    i2v_warp_pixels: bool = Field(
        False,
        description="With i2v_warp: the plane moves the reference image's pixels (edges extended) and the "
        "VAE encodes each frame's view, after the image, as the I2V latent of that frame (computed where the "
        "VAE is: worldloop.model.arch.warp.i2v_stills); the model reads them as given. False: the model "
        "warps the still latent itself at latent resolution, where a W/S zoom smaller than a latent pixel "
        "is lost.",
    )
    i2v_anchor: float | None = Field(
        None,
        gt=0.0,
        description="With i2v_still: the velocity is the optimal one for clean latents drawn around each "
        "frame's I2V latent (the warped or still reference) with this standard deviation, plus the "
        "experts' output (worldloop.model.arch.anchor). The zero-initialised head then starts as that "
        "prior, and the experts learn what it misses. None: the experts' output is the velocity (Wan).",
    )
    motion: CameraMotion = Field(default_factory=CameraMotion, description="Action → camera speeds.")
    fov_deg: float = Field(75.0, gt=10.0, lt=170.0, description="Horizontal field of view for K.")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        head_dim = self.dim // self.num_heads
        if self.i2v_warp is not None and not self.i2v_still:
            raise ValueError("i2v_warp moves the still latent: it needs i2v_still")
        if self.i2v_warp_pixels and self.i2v_warp is None:
            raise ValueError("i2v_warp_pixels warps through the plane: it needs i2v_warp")
        if self.i2v_anchor is not None and not self.i2v_still:
            raise ValueError("i2v_anchor centres the prediction on the still latent: it needs i2v_still")
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head dim {head_dim} must be even and >= 6 for 3D RoPE")
        if any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must be positive")
        if self.patch_size[0] != 1:
            raise ValueError("patch_size[0] must be 1: blocks are whole latent frames")
        return self

    # -- derived quantities -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def in_channels(self) -> int:
        """Noisy latent + I2V mask (one channel per video frame of a latent frame) + reference latent."""
        return 2 * self.vae.latent_channels + self.vae.temporal_stride

    @property
    def text_encoder_dim(self) -> int:
        """The width the text encoder must produce."""
        return self.text_input_dim or self.text_dim

    @property
    def context_len(self) -> int:
        return self.text_len + self.num_interaction_tokens

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for a video of ``height × width``; both must divide by VAE stride × patch."""
        s = self.vae.spatial_stride
        ph, pw = self.patch_size[1:]
        if height % (s * ph) or width % (s * pw):
            raise ValueError(f"video {height}x{width} must be divisible by {s * ph}x{s * pw}")
        return height // s, width // s

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of a ``height × width`` video."""
        h, w = self.latent_size(height, width)
        return (h // self.patch_size[1]) * (w // self.patch_size[2])

    def cache_frames(self) -> int:
        """Latent frames the self-attention cache holds at most: sinks + window (bounded forever)."""
        c = self.causal
        return 1 + (c.num_sink_blocks - 1 + c.window_blocks) * c.block_frames

    def parameters_per_expert(self) -> int:
        """Analytic parameter count of one expert transformer (matches the built module exactly)."""
        d, f, L = self.dim, self.ffn_dim, self.num_layers
        attn = 4 * (d * d + d) + (2 * d if self.qk_norm else 0)
        block = 2 * attn + 2 * d + (d * f + f) + (f * d + d) + 6 * d  # self, cross, norm3, ffn, mod
        patch = self.in_channels * d * self.patch_size[0] * self.patch_size[1] * self.patch_size[2] + d
        text = self.text_dim * d + d + d * d + d
        time = self.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
        out = self.latent_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        head = d * out + out + 2 * d
        return L * block + patch + text + time + head


# SynthWorld's rooms put walls 1.5-6 units from the camera: a plane at 3 units zooms and slides the
# reference the right way for a move, and any depth is exact for a turn (worldloop.model.arch.warp).
WARP_DEPTH = 3.0
# tiny does not anchor its velocity (i2v_anchor): anchored at 0.1 on the demo's chain (2026-12-06, 8
# held-out clips) it scored 20.6 dB and direction checks 0.9-1.0, but an *untrained* anchored DiT scored
# as well (20.78 dB, 1.0), so the promotion gate could no longer tell a trained model from an untrained
# one; unanchored, the untrained model scores 14.1 dB and the trained students 19.8 (README, Measured).


def tiny() -> ModelConfig:
    """CPU preset for tests and ``make demo``: trains in minutes, two experts like a14b."""
    return ModelConfig(
        name="tiny",
        dim=128,
        ffn_dim=512,
        num_heads=4,
        num_layers=2,
        num_experts=2,
        text_dim=384,
        text_len=32,
        num_interaction_tokens=4,
        freq_dim=64,
        camera_dim=32,
        causal=CausalConfig(block_frames=2, num_sink_blocks=1, window_blocks=2),
        vae=tiny_vae(),
        i2v_still=True,
        i2v_warp=WARP_DEPTH,
        i2v_warp_pixels=True,
    )


def small() -> ModelConfig:
    """One-GPU preset with Wan 1.3B dims (one expert, umT5 text width)."""
    return ModelConfig(
        name="small",
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        num_experts=1,
        text_dim=4096,
        text_len=512,
        camera_dim=256,
        vae=wan_vae(),
    )


def a14b() -> ModelConfig:
    """The paper's scale: Wan2.2 I2V-A14B dims, two ~14B experts split at boundary 0.900."""
    return ModelConfig(
        name="a14b",
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        num_experts=2,
        boundary=0.900,
        text_dim=4096,
        text_len=512,
        camera_dim=512,
        vae=wan_vae(),
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {"tiny": tiny, "small": small, "a14b": a14b}


def load_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (``tiny``, ``small`` or ``a14b``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
