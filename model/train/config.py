"""Training-stage configs (DESIGN.md §6) with presets per stage and scale.

0. VAE — the causal video VAE itself: reconstruction (pixel + SSIM) and a small KL;
1. action injection — flow matching over a curriculum of clip lengths;
2. instruction SFT — camera encoder frozen, only the expert layers (and the interaction extractor);
3. AR distillation — Self-Forcing + DMD with a critic and per-expert learning rates;
4. randomized long extension — rollouts to random lengths past the training length.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worldloop.data import DataSource
from worldloop.model.config import PRESETS
from worldloop.model.vae.recipe import tiny_vae_recipe


class Stage(str, Enum):
    vae = "vae"
    action = "action"
    instruction = "instruction"
    distill = "distill"
    long = "long"


class ParamGroup(str, Enum):
    """Parameter groups a stage may train (the rest are frozen)."""

    experts = "experts"
    camera = "camera"
    interaction = "interaction"
    vae = "vae"  # the causal VAE (stage vae only)


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class CurriculumPhase(BaseModel):
    """Train on clips of ``frames`` video frames for ``steps`` optimiser steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(gt=0, description="Video frames per clip; must be 4k+1 (VAE: first frame alone).")
    steps: int = Field(gt=0, description="Optimiser steps in this phase.")

    @field_validator("frames")
    @classmethod
    def _four_k_plus_one(cls, frames: int) -> int:
        if (frames - 1) % 4:
            raise ValueError(f"{frames} frames is not 4k+1 (e.g. 9, 13, 17, 45, 81)")
        return frames


class VAELossConfig(BaseModel):
    """Stage 0: the VAE's loss, ``pixel + ssim_weight·(1 − SSIM) + kl_weight·KL`` (model/vae/loss.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_loss: Literal["l1", "mse"] = Field("l1", description="Per-pixel reconstruction term.")
    ssim_weight: float = Field(0.0, ge=0.0, description="Weight of 1 − SSIM (structure, sharp edges).")
    kl_weight: float = Field(1e-6, ge=0.0, description="Weight of the KL to N(0, I) (keeps latents tame).")
    latent_stats_clips: int = Field(
        8, ge=1, description="Clips whose latents set the VAE's per-channel mean/std at the end of the stage."
    )


class DistillConfig(BaseModel):
    """Self-Forcing + DMD (stage 3/4): student steps, critic schedule, teacher guidance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    student_steps: int = Field(4, ge=1, description="Denoising steps of the distilled student.")
    steps_per_expert: tuple[int, int] = Field(
        (2, 2), description="Student steps on the high-/low-noise side of the boundary."
    )
    critic_steps_per_generator: int = Field(5, ge=1, description="Critic updates per generator update.")
    critic_lr: float = Field(2e-6, gt=0.0, description="Fake-score (critic) learning rate.")
    guidance_scale: float = Field(3.0, ge=1.0, description="Classifier-free guidance of the real score.")

    @model_validator(mode="after")
    def _steps_add_up(self) -> DistillConfig:
        if sum(self.steps_per_expert) != self.student_steps:
            raise ValueError(
                f"steps_per_expert {self.steps_per_expert} must add up to student_steps {self.student_steps}"
            )
        return self


class LongExtensionConfig(BaseModel):
    """Stage 4 (paper §"Randomized Long Video Extension Tuning"): roll the student out along a long real
    clip to a random length, align a window sampled uniformly along the rollout, and alternate self- and
    teacher-forcing at random block boundaries before it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rollout_blocks: int = Field(
        gt=0, description="Shortest rollout (the window's last block), in blocks."
    )
    max_rollout_blocks: int = Field(
        gt=0, description="Longest rollout, in blocks; a clip with fewer real blocks caps it."
    )
    window_blocks: int = Field(gt=0, description="Blocks per window aligned with DMD.")
    teacher_forcing_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the blocks before the window taken from the real clip."
    )
    switch_prob: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Chance that self/teacher forcing is drawn anew at a block boundary before the window.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LongExtensionConfig:
        if not self.min_rollout_blocks <= self.max_rollout_blocks:
            raise ValueError("min_rollout_blocks must be <= max_rollout_blocks")
        if self.window_blocks > self.min_rollout_blocks:
            raise ValueError("window_blocks must fit in the shortest rollout (<= min_rollout_blocks)")
        return self


class TrainConfig(BaseModel):
    """One training stage. YAML-loadable (worldloop.config_io); invalid fields are named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage
    model_preset: str = Field("tiny", description="Model preset (worldloop.model.load_preset).")
    seed: int = Field(0, ge=0)
    height: int = Field(64, gt=0, description="Training resolution (pixels).")
    width: int = Field(64, gt=0)
    curriculum: tuple[CurriculumPhase, ...] = Field(description="Clip-length phases, increasing length.")
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    lr: float = Field(1e-4, gt=0.0, description="Learning rate (both experts unless expert_lr is set).")
    expert_lr: tuple[float, float] | None = Field(
        None, description="(high-noise, low-noise) expert learning rates; the paper trains high slower."
    )
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warm-up: flat, or cosine decay to min_lr_ratio·lr at the last step."
    )
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Floor of the cosine decay, times lr.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0.0)
    precision: Precision = Field(Precision.fp32, description="bf16 on GPU; fp32 on CPU.")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = plain DDP).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each DiT block in backward instead of storing its activations."
    )
    trainable: frozenset[ParamGroup] = Field(description="Parameter groups updated by this stage.")
    data: tuple[DataSource, ...] = Field(
        (),
        description="The stage's data mixture, [{uri, weight}]; the command line's --data replaces it.",
    )
    shift: float = Field(5.0, gt=0.0, description="Timestep shift of the flow-matching schedule.")
    per_frame_sigma: bool = Field(False, description="Independent noise level per latent frame.")
    long_caption_prob: float = Field(0.5, ge=0.0, le=1.0, description="P(long scene caption) vs short.")
    caption_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Flow-matching stages (1-2): P(a sample is trained with the empty text and no "
        "instruction), so the model learns the unconditional branch the real score's classifier-free "
        "guidance (stages 3-4, DistillConfig.guidance_scale) subtracts. Seeded per sample.",
    )
    counterfactual_weight: float = Field(
        0.0,
        ge=0.0,
        description="Stage 2: windows with turns are paired with the same window of their clip's "
        "counterfactual twin (KEY-twin: the same shot, no event, no instruction), noised alike, and the "
        "loss adds this weight times the error of the pair's velocity *difference* — what the "
        "instruction alone changes (objectives/flow_matching.py). 0: no pairing.",
    )
    checkpoint_every: int = Field(100, ge=1, description="Steps between (atomic) checkpoints.")
    log_every: int = Field(10, ge=1, description="Steps between MLflow metric logs.")
    distill: DistillConfig | None = Field(None, description="Required by stages distill and long.")
    long: LongExtensionConfig | None = Field(None, description="Required by stage long.")
    vae: VAELossConfig | None = Field(None, description="Required by stage vae.")

    @field_validator("model_preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return name

    @field_validator("curriculum")
    @classmethod
    def _increasing(cls, phases: tuple[CurriculumPhase, ...]) -> tuple[CurriculumPhase, ...]:
        if not phases:
            raise ValueError("needs at least one phase")
        lengths = [p.frames for p in phases]
        if any(b <= a for a, b in zip(lengths, lengths[1:], strict=False)):
            raise ValueError(f"clip lengths must increase phase by phase, got {lengths}")
        return phases

    @model_validator(mode="after")
    def _stage_rules(self) -> TrainConfig:
        if not self.trainable:
            raise ValueError("trainable must name at least one parameter group")
        if self.stage is Stage.instruction and ParamGroup.camera in self.trainable:
            raise ValueError("stage instruction keeps the camera encoder frozen (paper §stage 2)")
        if self.stage in (Stage.distill, Stage.long) and self.distill is None:
            raise ValueError(f"stage {self.stage.value} needs a 'distill' section")
        if self.stage is Stage.long and self.long is None:
            raise ValueError("stage long needs a 'long' section")
        if (self.stage is Stage.vae) != (self.trainable == {ParamGroup.vae}):
            raise ValueError("stage vae trains exactly the 'vae' group, and only stage vae trains it")
        if self.stage is Stage.vae and self.vae is None:
            raise ValueError("stage vae needs a 'vae' section")
        if self.counterfactual_weight > 0 and self.stage is not Stage.instruction:
            raise ValueError("counterfactual_weight pairs instruction turns: only stage instruction has them")
        return self

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.curriculum)

    def with_clip_frames(self, frames: int) -> TrainConfig:
        """This config with every curriculum phase on clips of ``frames`` video frames."""
        phases = tuple(CurriculumPhase(frames=frames, steps=p.steps) for p in self.curriculum)
        return self.model_copy(update={"curriculum": phases})

    def scaled(self, factor: float) -> TrainConfig:
        """This config with every phase's steps (and the warm-up) times ``factor`` (at least one step
        per phase): the same recipe, shorter or longer (``make demo`` runs the tiny chain at a fraction)."""
        if factor <= 0:
            raise ValueError(f"steps scale must be > 0, got {factor}")
        phases = tuple(
            p.model_copy(update={"steps": max(1, round(p.steps * factor))}) for p in self.curriculum
        )
        total = sum(p.steps for p in phases)
        warmup = min(round(self.warmup_steps * factor), max(0, total - 1))
        return self.model_copy(update={"curriculum": phases, "warmup_steps": warmup})


LONG_CLIP_FRAMES = 161  # stage 4's clips at tiny: 10 s at SynthWorld's 16 fps (1 + 4k video frames)


# Stages 1-2 train the unconditional branch on this share of samples (Wan-style text dropout): the
# stage-3/4 real score's guidance needs it. Without it (tiny, trained from scratch) guidance 3 amplified
# an untrained difference and the stage-3 student lost 0.24 dB on held-out blocks 1-2 (bench_quality).
CAPTION_DROPOUT = 0.1


def stage_preset(stage: Stage | str, *, scale: str = "tiny") -> TrainConfig:
    """Defaults for ``stage`` at ``scale`` (tiny: CPU minutes; a14b: the paper's 45→81→149 @ 480p)."""
    stage = Stage(stage)
    if scale not in PRESETS:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(PRESETS)}")
    big = scale != "tiny"
    lengths = (45, 81, 149) if big else (9, 13, 17)
    # tiny: the quality ladder (benchmarks/bench_quality.py) measured stage 1 at 2e-4 for 40 steps
    # generating noise (velocity loss 1.74 of an untrained 2.0), so 1e-3. With the still-latent
    # condition, 3000 stage-1 steps instead of 1000 (the demo's half-scale curriculum, ~3 CPU-minutes
    # more) took the stage-2 model from 19.15 to 19.44 dB on 8 held-out clips' blocks 1-2 and the stage-3
    # student from 19.06 to 19.32 (the frozen first frame: 18.45).
    steps = (2000, 1000, 500) if big else (3000, 1500, 1500)
    curriculum = tuple(CurriculumPhase(frames=f, steps=s) for f, s in zip(lengths, steps, strict=True))
    common = {
        "stage": stage,
        "model_preset": scale,
        "height": 480 if big else 64,
        "width": 832 if big else 64,
        "precision": Precision.bf16 if big else Precision.fp32,
        "zero_stage": 3 if big else 0,
        "gradient_checkpointing": big,
    }
    if stage is Stage.vae:
        return vae_stage_preset(common)
    if stage is Stage.action:
        return TrainConfig(
            **common,
            curriculum=curriculum,
            lr=1e-5 if big else 1e-3,
            caption_dropout=CAPTION_DROPOUT,
            trainable=frozenset({ParamGroup.experts, ParamGroup.camera, ParamGroup.interaction}),
        )
    if stage is Stage.instruction:
        # per-expert rates (paper, "Distillation Schedule": "high-noise experts face greater challenges
        # in training and convergence ... we assign different learning rates to each expert"): the
        # high-noise expert at half the low-noise one's, as in stages 3-4; the interaction side at lr
        sft_lr = 1e-5 if big else 5e-4
        return TrainConfig(
            **common,
            curriculum=curriculum[-1:] if big else (CurriculumPhase(frames=17, steps=50),),
            lr=sft_lr,
            expert_lr=(sft_lr / 2, sft_lr),
            caption_dropout=CAPTION_DROPOUT,
            trainable=frozenset({ParamGroup.experts, ParamGroup.interaction}),
        )
    # tiny: fewer critic steps per generator step keeps the CPU chain (stages 1→4) within minutes.
    # tiny: no guidance on the real score. Measured on the full pipeline's stage-2 model (8 held-out
    # clips, blocks 1-2, frozen frame 18.45 dB), 80 stage-3 steps at guidance 1 / 1.5 / 2 / 3 gave
    # 19.04 / 18.26 / 17.69 / 17.06 dB: a from-scratch teacher's guided score drifts the student (its
    # block 2 fell to 15.9), even with the unconditional branch trained (caption dropout).
    distill = DistillConfig(
        critic_lr=2e-6 if big else 1e-3,
        critic_steps_per_generator=5 if big else 2,
        guidance_scale=3.0 if big else 1.0,
    )
    expert_lr = (2e-6, 4e-6) if big else (5e-5, 1e-4)
    # The causal student generates whole blocks: clip lengths are 1 + 4·block_frames·k video frames
    # (a14b: blocks of 3 latent frames → 73 ≈ the paper's 81; tiny: blocks of 2 → 17).
    student = (CurriculumPhase(frames=73 if big else 17, steps=1000 if big else 80),)
    if stage is Stage.distill:
        return TrainConfig(
            **common,
            curriculum=student,
            lr=expert_lr[1],
            expert_lr=expert_lr,
            per_frame_sigma=True,
            trainable=frozenset({ParamGroup.experts, ParamGroup.interaction}),
            distill=distill,
        )
    # Rollouts run past any stage-3 clip (tiny: 2 blocks, a14b: 6) and along the long clips (tiny: 10 s
    # = 20 blocks): the window ends anywhere from block 3 to 20.
    long = LongExtensionConfig(
        min_rollout_blocks=8 if big else 3,
        max_rollout_blocks=40 if big else 20,
        window_blocks=4 if big else 2,
    )
    # tiny: stage 4 at stage 3's rates took the student from 20.1 to 15.7 dB on held-out blocks 1-2
    # in 40 steps (an early build); at half of them to 18.5 (bench_quality). With each score reading
    # the views of its own frame 0 (objectives/long_extension.py), these rates put the full pipeline's
    # stage 4 at or above its stage 3 on 20-block rollouts (README, Measured).
    long_lr = expert_lr if big else (2.5e-5, 5e-5)
    return TrainConfig(
        **common,
        # tiny: 10 s clips, so a teacher-forced step's context is real long footage (20 blocks)
        curriculum=(CurriculumPhase(frames=LONG_CLIP_FRAMES, steps=40),) if not big else student,
        lr=long_lr[1],
        expert_lr=long_lr,
        per_frame_sigma=True,
        trainable=frozenset({ParamGroup.experts, ParamGroup.interaction}),
        distill=distill,
        long=long,
    )


def vae_stage_preset(common: dict[str, Any]) -> TrainConfig:
    """Stage 0 at the scale ``common`` describes. tiny: the recipe measured on a 2-core CPU
    (:func:`~worldloop.model.vae.recipe.tiny_vae_recipe`, ``benchmarks/bench_vae_recipes.py``); larger
    scales fine-tune a loaded VAE (Wan's, ``--init``) gently on 17-frame clips."""
    if common["model_preset"] == "tiny":
        recipe = tiny_vae_recipe()
        return TrainConfig(
            **common,
            curriculum=(CurriculumPhase(frames=recipe.num_frames, steps=recipe.num_steps),),
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            betas=recipe.betas,
            weight_decay=recipe.weight_decay,
            warmup_steps=recipe.warmup_steps,
            lr_schedule=recipe.schedule,
            min_lr_ratio=recipe.min_lr_ratio,
            grad_clip=recipe.grad_clip,
            trainable=frozenset({ParamGroup.vae}),
            vae=VAELossConfig(
                pixel_loss=recipe.pixel_loss, ssim_weight=recipe.ssim_weight, kl_weight=recipe.kl_weight
            ),
        )
    return TrainConfig(
        **common,
        curriculum=(CurriculumPhase(frames=17, steps=2000),),
        lr=1e-5,
        warmup_steps=100,
        lr_schedule="cosine",
        betas=(0.9, 0.99),
        trainable=frozenset({ParamGroup.vae}),
        checkpoint_every=200,
        vae=VAELossConfig(),
    )
