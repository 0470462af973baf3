"""Causal video VAE configuration (DESIGN.md §5.1): temporal ×4, spatial ×8, 16 latent channels."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VAEConfig(BaseModel):
    """Shape of the causal 3-D VAE (Wan2.1 layout).

    Stage ``i`` of the encoder has ``base_channels * channel_multipliers[i]`` channels; every stage
    but the last ends in a ×2 spatial downsample, which also halves time where
    ``temporal_downsample[i]`` is set. The first frame is always encoded alone, so ``F`` video frames
    map to ``1 + (F - 1) / temporal_stride`` latent frames.
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
        if self.logvar_min >= self.logvar_max:
            raise ValueError("logvar_min must be below logvar_max")
        return self

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame after the first (4 for Wan)."""
        return int(2 ** sum(self.temporal_downsample))

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel along height and width (8 for Wan)."""
        return int(2 ** (len(self.channel_multipliers) - 1))

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
    """A few-hundred-kilobyte VAE that trains on CPU in minutes (tests, ``make demo``)."""
    return VAEConfig(
        base_channels=16,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(False, True, True),
    )


def wan_vae() -> VAEConfig:
    """Wan2.1 VAE dimensions (the VAE Wan2.2 I2V-A14B uses): 96 base channels, mults (1, 2, 4, 4)."""
    return VAEConfig(
        base_channels=96,
        channel_multipliers=(1, 2, 4, 4),
        num_res_blocks=2,
        temporal_downsample=(False, True, True),
    )
