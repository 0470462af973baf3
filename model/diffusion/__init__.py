"""Flow matching: conversions, schedules, samplers and guidance (DESIGN.md §5.5)."""

from worldloop.model.diffusion.flow_matching import (
    add_noise,
    expand_sigma,
    noise_from_velocity,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)
from worldloop.model.diffusion.guidance import cfg_combine, guided_denoiser
from worldloop.model.diffusion.sampler import Denoiser, euler_sample, few_step_sample
from worldloop.model.diffusion.schedule import (
    HIGH_NOISE_EXPERT,
    LOW_NOISE_EXPERT,
    NUM_TRAIN_TIMESTEPS,
    euler_timesteps,
    expert_for_timestep,
    few_step_timesteps,
    sample_training_sigmas,
    shift_sigma,
    sigmas_to_timesteps,
    timesteps_to_sigmas,
    unshift_sigma,
)

__all__ = [
    "HIGH_NOISE_EXPERT",
    "LOW_NOISE_EXPERT",
    "NUM_TRAIN_TIMESTEPS",
    "Denoiser",
    "add_noise",
    "cfg_combine",
    "euler_sample",
    "euler_timesteps",
    "expand_sigma",
    "expert_for_timestep",
    "few_step_sample",
    "few_step_timesteps",
    "guided_denoiser",
    "noise_from_velocity",
    "sample_training_sigmas",
    "shift_sigma",
    "sigmas_to_timesteps",
    "timesteps_to_sigmas",
    "unshift_sigma",
    "velocity_from_x0",
    "velocity_target",
    "x0_from_velocity",
]
