"""Causal video VAE configuration (DESIGN.md §5.1): temporal ×4, spatial ×8, 16 latent channels."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VAEConfig(BaseModel):
    """Shape of the causal 3-D VAE (Wan2.1 layout, optionally patchified like Wan2.2's TI2V VAE).

    With ``patch_size`` p > 1 each frame is first folded into p×p-pixel patches (channels ×p², H and W
    ÷p) and the decoder's output is unfolded again, so every convolution runs at 1/p² of the pixels
    (LTX-Video and the Wan2.2 TI2V-5B VAE, p = 2). Stage ``i`` of the encoder then has
    ``base_channels * channel_multipliers[i]`` channels; every stage but the last ends in a ×2 spatial
    downsample, which also halves time where ``temporal_downsample[i]`` is set. The first frame is
    always encoded alone, so ``F`` video frames map to ``1 + (F - 1) / temporal_stride`` latent frames.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(3, ge=1, description="Video channels (RGB).")
    latent_channels: int = Field(16, ge=1, description="Latent channels the backbone sees.")
    base_channels: int = Field(..., ge=2, description="Channels of the first encoder stage (Wan: 96).")
    channel_multipliers: tuple[int, ...] = Field(
        ..., min_length=2, description="Per-stage channel multipliers; len - 1 spatial ×2 downsamples."
    )
    num_res_blocks: int = Field(..., ge=1, description="Residual blocks per encoder stage (+1 in decoder).")
    temporal_downsample: tuple[bool, ...] = Field(
        ..., description="Which downsample stages also halve time (Wan: (False, True, True))."
    )
    patch_size: int = Field(
        1, ge=1, description="Pixel-(un)shuffle factor at the input/output (Wan2.1: 1, Wan2.2 TI2V: 2)."
    )
    latent_shortcut: bool = Field(
        False,
        description="Add block means of the input to the first C·cells² latent channels and repeat "
        "them back onto the output (model/vae/shortcut.py; DC-AE, Wan2.2's AvgDown3D). Not in Wan2.1.",
    )
    linear_code: bool = Field(
        False,
        description="Every latent channel carries a learned linear block code, fitted as the PCA of the "
        "training windows before the first step, that the networks add to (model/vae/linear_code.py). "
        "Not in Wan2.1.",
    )
    init_logvar: float = Field(
        0.0,
        le=0.0,
        description="Initial posterior log-variance (the quant conv's logvar bias). At 0 the sampled "
        "latent starts as unit noise over a mean of ~1, which a minutes-long run never learns past; "
        "-6 (σ ≈ 0.05) lets the decoder see the signal from step 0. Loaded weights override it.",
    )
    logvar_min: float = Field(-30.0, description="Posterior log-variance clamp (numerical safety).")
    logvar_max: float = Field(20.0, description="Posterior log-variance clamp (numerical safety).")

    @model_validator(mode="after")
    def _check(self) -> VAEConfig:
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per downsample stage "
                f"({len(self.channel_multipliers) - 1}), got {len(self.temporal_downsample)}"
            )
        if any(m < 1 for m in self.channel_multipliers):
            raise ValueError(f"channel_multipliers must be ≥ 1, got {self.channel_multipliers}")
        # The decoder's spatial upsample halves channels (Wan layout), so every stage width is even.
        if any((self.base_channels * m) % 2 for m in self.channel_multipliers):
            raise ValueError("base_channels * every channel multiplier must be even")
        if self.linear_code and self.latent_shortcut:
            raise ValueError("linear_code and latent_shortcut are two kinds of shortcut: choose one")
        if self.linear_code and self.latent_channels > self.in_channels * self.spatial_stride**2:
            raise ValueError(
                f"linear_code carries at most in_channels·spatial_stride² = "
                f"{self.in_channels * self.spatial_stride**2} numbers per latent pixel of a single frame, "
                f"got latent_channels {self.latent_channels}"
            )
        if self.latent_shortcut and self.in_channels > self.latent_channels:
            raise ValueError("latent_shortcut needs latent_channels ≥ in_channels")
        if self.logvar_min >= self.logvar_max:
            raise ValueError("logvar_min must be below logvar_max")
        return self

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame after the first (4 for Wan)."""
        return int(2 ** sum(self.temporal_downsample))

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel along height and width (8 for Wan): patch × 2^downsamples."""
        return self.patch_size * int(2 ** (len(self.channel_multipliers) - 1))

    @property
    def patch_channels(self) -> int:
        """Channels the encoder's first conv sees (and the decoder's last conv emits): C·p²."""
        return self.in_channels * self.patch_size**2

    @property
    def shortcut_cells(self) -> int:
        """Sub-blocks per latent pixel side carried by the shortcut (0 when off): the most that fit
        ``in_channels · cells²`` latent channels (2 for RGB into 16), dividing the spatial stride."""
        if not self.latent_shortcut:
            return 0
        cells = 1
        while (
            self.in_channels * (2 * cells) ** 2 <= self.latent_channels
            and self.spatial_stride % (2 * cells) == 0
        ):
            cells *= 2
        return cells

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Encoder channels per stage: ``base_channels * channel_multipliers[i]``."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for ``num_frames`` video frames; raises ValueError unless F = 1 + stride·k."""
        stride = self.temporal_stride
        if num_frames < 1 or (num_frames - 1) % stride:
            raise ValueError(
                f"num_frames must be 1 + {stride}·k (first frame alone, then groups of {stride}), "
                f"got {num_frames}; trim to {max(1, 1 + (num_frames - 1) // stride * stride)} frames"
            )
        return 1 + (num_frames - 1) // stride

    def video_frames(self, num_latent_frames: int) -> int:
        """Video frames decoded from ``num_latent_frames`` latent frames: ``1 + stride·(T - 1)``."""
        if num_latent_frames < 1:
            raise ValueError(f"num_latent_frames must be ≥ 1, got {num_latent_frames}")
        return 1 + self.temporal_stride * (num_latent_frames - 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for a (height, width) video; raises ValueError unless both divide evenly."""
        stride = self.spatial_stride
        if height % stride or width % stride or height < 1 or width < 1:
            raise ValueError(
                f"video height {height} and width {width} must both be positive multiples of the "
                f"VAE spatial stride {stride}; crop or resize the frames"
            )
        return height // stride, width // stride


def tiny_vae() -> VAEConfig:
    """The CPU VAE (tests, ``make demo``): patch 2, then 16/32/64 channels at 32², 16², 8² (1.9M
    params), 16 latent channels carrying a linear block code, and a narrow initial posterior.

    Chosen in ``benchmarks/bench_vae_recipes.py`` (CPU-minute budgets, held-out 64×64 clips):
    patchifying skips the full-resolution stage that dominated the Wan2.1-layout tiny VAE, for 2.3×
    its training frames/s (28 vs 12 per CPU-second). A VAE trained for minutes stays near its shortcut:
    the colour-means shortcut alone gives 20.3 dB and the VAE trained on it 20.2–20.3 dB, while a linear
    code of 16 numbers per 8×8-pixel, 4-frame block (PCA) gives 22.3 dB — so the latent starts as that
    code (:mod:`~worldloop.model.vae.linear_code`, fitted before the first step). 64 channels would
    reconstruct better still (PCA 25.4 dB; 26.7 dB in the demo's ladder) but the demo's briefly trained
    world model followed far worse on them (rollout 16.2 dB vs 19.3 at 16, measured with one latent scale
    pooled over the channels), so the latent keeps the 16
    channels and strides (×4 time, ×8 space) of Wan. Train it with
    :func:`~worldloop.model.vae.recipe.tiny_vae_recipe`.
    """
    return VAEConfig(
        base_channels=16,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        patch_size=2,
        linear_code=True,
        init_logvar=-6.0,
    )


def wan_vae() -> VAEConfig:
    """Wan2.1 VAE dimensions (the VAE Wan2.2 I2V-A14B uses): 96 base channels, mults (1, 2, 4, 4)."""
    return VAEConfig(
        base_channels=96,
        channel_multipliers=(1, 2, 4, 4),
        num_res_blocks=2,
        temporal_downsample=(False, True, True),
    )
