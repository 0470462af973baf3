"""Distribution Matching Distillation (Yin et al. 2024) losses for the causal student.

The frozen bidirectional teacher is the *real* score (with classifier-free guidance); a trainable
critic initialised from the teacher is the *fake* score and tracks the student's distribution by
flow matching on the student's samples. The generator follows

    g = (fake_x0 − real_x0) / mean|x − real_x0|,     loss = ½‖x − sg(x − g)‖²,

whose gradient with respect to x is g: it pushes samples from where the critic thinks the student
puts them towards where the teacher puts real data. Latent frame 0 (the reference image) is clean
and never noised or scored.

Both scores run with grad mode on but nothing requiring grad (inputs detached, teacher and critic
frozen for the call), so no graph is built and :meth:`WorldModel.forward` takes its training path:
every expert runs, on an empty batch when no sample's σ chose it. Each data-parallel rank then calls
the same modules in the same order whatever σ its samples drew — ZeRO-3 gathers every module's
partitioned parameters with a collective, so the ranks must agree. The outputs are the ones a no-grad
call gives (an expert's rows only depend on that expert).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.arch.world_model import Conditioning, WorldModel
from worldloop.model.diffusion.flow_matching import add_noise, velocity_target, x0_from_velocity
from worldloop.model.diffusion.guidance import cfg_combine
from worldloop.model.diffusion.schedule import sample_training_sigmas


def _noised(
    x: Tensor, generators: Sequence[torch.Generator], *, shift: float, min_sigma: float, max_sigma: float
) -> tuple[Tensor, Tensor, Tensor]:
    """x_t, σ (B, T) and the noise; frame 0 stays clean; σ drawn in [min_sigma, max_sigma]."""
    b, c, t = x.shape[:3]
    sig, noise = [], []
    for g in generators:
        s = sample_training_sigmas(1, 1, shift=shift, per_frame=False, generator=g)
        sig.append(min_sigma + (max_sigma - min_sigma) * s)
        noise.append(torch.randn((1, *x.shape[1:]), generator=g))
    sigma = torch.cat([torch.zeros(b, 1), torch.cat(sig).expand(b, t - 1)], dim=1).to(x.device)
    eps = torch.cat(noise).to(x)
    return add_noise(x, eps, sigma), sigma, eps


@contextmanager
def frozen_scores(*models: WorldModel) -> Iterator[None]:
    """Grad mode on, every parameter of ``models`` frozen; the flags are restored on exit.

    With nothing requiring grad no graph is built, yet :meth:`WorldModel.forward` runs every expert on
    every rank (see the module docstring). A trained critic's gradient hooks stay registered.
    """
    flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def guided_x0(
    model: WorldModel,
    x_t: Tensor,
    sigma: Tensor,
    *,
    cond: Tensor,
    camera: Tensor,
    conditioning: Conditioning,
    unconditional: Conditioning | None,
    guidance: float,
) -> Tensor:
    """x0 prediction of a bidirectional model, with CFG against ``unconditional`` when given."""
    kw = {"timesteps": sigma * 1000.0, "cond": cond, "camera": camera, "causal": False}
    v = model(x_t, conditioning=conditioning, **kw)
    if unconditional is not None and guidance != 1.0:
        v = cfg_combine(v, model(x_t, conditioning=unconditional, **kw), guidance)
    return x0_from_velocity(x_t, v, sigma)


def dmd_generator_loss(
    x: Tensor,
    *,
    teacher: WorldModel,
    critic: WorldModel,
    cond: Tensor,
    camera: Tensor,
    conditioning: Conditioning,
    unconditional: Conditioning,
    guidance: float,
    generators: Sequence[torch.Generator],
    shift: float,
    min_sigma: float = 0.02,
    max_sigma: float = 0.98,
    real_first: Tensor | None = None,
    real_cond: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DMD loss for student samples ``x`` (B, C, T, h, w) with gradient; teacher and critic frozen here.

    Frame 0 of ``x`` is the clean image both scores condition on (``cond`` is built from it). With
    ``real_first`` (B, C, 1, h, w) and its ``real_cond`` the real score conditions on that frame instead
    — stage 4: the real video's frame where the critic sees the student's own previous frame."""
    if (real_first is None) != (real_cond is None):
        raise ValueError("real_first and real_cond go together")
    with torch.no_grad():
        x_t, sigma, _ = _noised(x.detach(), generators, shift=shift, min_sigma=min_sigma, max_sigma=max_sigma)
        real_x_t = x_t if real_first is None else torch.cat([real_first.to(x_t), x_t[:, :, 1:]], dim=2)
    with frozen_scores(teacher, critic):
        real = guided_x0(
            teacher,
            real_x_t,
            sigma,
            cond=cond if real_cond is None else real_cond,
            camera=camera,
            conditioning=conditioning,
            unconditional=unconditional,
            guidance=guidance,
        )
        fake = guided_x0(
            critic,
            x_t,
            sigma,
            cond=cond,
            camera=camera,
            conditioning=conditioning,
            unconditional=None,
            guidance=1.0,
        )
    assert not (real.requires_grad or fake.requires_grad), "a score built a graph"
    with torch.no_grad():
        gen = x.detach()[:, :, 1:]
        scale = (gen - real[:, :, 1:]).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = (fake[:, :, 1:] - real[:, :, 1:]) / scale
        grad = torch.nan_to_num(grad)
        target = gen - grad
    loss = 0.5 * F.mse_loss(x[:, :, 1:].float(), target.float())
    return loss, {"dmd_grad_norm": float(grad.norm()), "dmd_sigma": float(sigma[:, 1:].mean())}


def critic_loss(
    critic: WorldModel,
    x: Tensor,
    *,
    cond: Tensor,
    camera: Tensor,
    conditioning: Conditioning,
    generators: Sequence[torch.Generator],
    shift: float,
    forward: object | None = None,
) -> Tensor:
    """Flow matching of the critic on (detached) student samples: the fake score's own objective."""
    x = x.detach()
    x_t, sigma, eps = _noised(x, generators, shift=shift, min_sigma=0.0, max_sigma=1.0)
    call = forward if callable(forward) else critic
    v = call(x_t, timesteps=sigma * 1000.0, cond=cond, camera=camera, conditioning=conditioning, causal=False)
    return F.mse_loss(v[:, :, 1:].float(), velocity_target(x, eps)[:, :, 1:].float())
