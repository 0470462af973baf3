import pytest
import torch
from torch import Tensor

from worldloop.model.diffusion import (
    HIGH_NOISE_EXPERT,
    LOW_NOISE_EXPERT,
    add_noise,
    cfg_combine,
    euler_sample,
    euler_timesteps,
    expand_sigma,
    expert_for_timestep,
    few_step_sample,
    few_step_timesteps,
    guided_denoiser,
    noise_from_velocity,
    sample_training_sigmas,
    shift_sigma,
    sigmas_to_timesteps,
    timesteps_to_sigmas,
    unshift_sigma,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)

B, C, F, H, W = 2, 3, 5, 4, 4


def latents(seed: int, shape: tuple[int, ...] = (B, C, F, H, W)) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- conversions ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_frame", [False, True])
def test_conversions_round_trip(per_frame: bool) -> None:
    x0, noise = latents(0), latents(1)
    g = torch.Generator().manual_seed(2)
    sigma = torch.rand((B, F) if per_frame else (B,), generator=g) * 0.98 + 0.01
    x_t = add_noise(x0, noise, sigma)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(x0_from_velocity(x_t, v, sigma), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(noise_from_velocity(x_t, v, sigma), noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(velocity_from_x0(x_t, x0, sigma), v, atol=1e-4, rtol=1e-4)


def test_per_frame_sigma_noises_each_frame_at_its_own_level() -> None:
    x0, noise = latents(0), latents(1)
    sigma = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]] * B)
    x_t = add_noise(x0, noise, sigma)
    for f in range(F):
        s = sigma[0, f].item()
        torch.testing.assert_close(x_t[:, :, f], (1 - s) * x0[:, :, f] + s * noise[:, :, f])


def test_sigma_endpoints() -> None:
    x0, noise = latents(0), latents(1)
    assert torch.equal(add_noise(x0, noise, torch.zeros(B)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(B, F)), noise)
    # At σ = 0 the clamp keeps velocity_from_x0 finite and x0_from_velocity gives back x_t.
    v = velocity_from_x0(x0, x0 + 0, torch.zeros(B))
    assert torch.isfinite(v).all()
    torch.testing.assert_close(x0_from_velocity(x0, v, torch.zeros(B)), x0)


def test_low_precision_keeps_dtype_and_accuracy() -> None:
    x0, noise = latents(0).bfloat16(), latents(1).bfloat16()
    sigma = torch.full((B, F), 0.3)
    x_t = add_noise(x0, noise, sigma)
    assert x_t.dtype == torch.bfloat16
    out = x0_from_velocity(x_t, velocity_target(x0, noise), sigma)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), x0.float(), atol=0.05, rtol=0)


def test_expand_sigma_shapes_and_errors() -> None:
    like = latents(0)
    assert expand_sigma(torch.zeros(B), like).shape == (B, 1, 1, 1, 1)
    assert expand_sigma(torch.zeros(B, F), like).shape == (B, 1, F, 1, 1)
    assert expand_sigma(torch.tensor(0.5), like).shape == ()
    with pytest.raises(ValueError, match="per-frame"):
        expand_sigma(torch.zeros(B, F + 1), like)
    with pytest.raises(ValueError, match="batch"):
        expand_sigma(torch.zeros(B + 1), like)
    with pytest.raises(ValueError, match="shape"):
        expand_sigma(torch.zeros(B, F, 1), like)


# --- schedule ------------------------------------------------------------------------------


def test_shift_is_monotone_with_fixed_endpoints() -> None:
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (0.5, 1.0, 3.0, 5.0):
        s = shift_sigma(u, shift)
        assert (s[1:] > s[:-1]).all()
        assert shift_sigma(0.0, shift) == 0.0 and shift_sigma(1.0, shift) == 1.0
        torch.testing.assert_close(unshift_sigma(s, shift), u)
    assert (shift_sigma(u[1:-1], 5.0) > u[1:-1]).all()  # shift > 1 spends more steps at high noise
    assert sigmas_to_timesteps(0.25) == 250.0 and timesteps_to_sigmas(750.0) == 0.75


def test_four_step_list_matches_wan_shift5() -> None:
    ts = few_step_timesteps(4, shift=5.0)
    assert ts == pytest.approx([1000.0, 937.5, 833.3, 625.0], abs=0.1)
    assert euler_timesteps(4, shift=5.0) == ts


@pytest.mark.parametrize(
    ("num_steps", "split", "shift"),
    [(4, (2, 2), 5.0), (4, (1, 3), 5.0), (4, (3, 1), 1.0), (6, (2, 4), 3.0), (3, None, 5.0), (1, None, 5.0)],
)
def test_expert_aligned_counts_and_order(num_steps: int, split: tuple[int, int] | None, shift: float) -> None:
    boundary = 0.9
    ts = few_step_timesteps(num_steps, shift=shift, boundary=boundary, steps_per_expert=split)
    n_high, n_low = split or (num_steps - num_steps // 2, num_steps // 2)
    assert len(ts) == num_steps and ts[0] == pytest.approx(1000.0)
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))
    assert all(t > 0 for t in ts)
    experts = [expert_for_timestep(t, boundary) for t in ts]
    assert experts == [HIGH_NOISE_EXPERT] * n_high + [LOW_NOISE_EXPERT] * n_low


def test_expert_aligned_changes_a_misaligned_uniform_grid() -> None:
    # With shift 1 the uniform 4-step grid has only one step above t=900; alignment moves one across.
    uniform = few_step_timesteps(4, shift=1.0)
    assert sum(t >= 900 for t in uniform) == 1
    aligned = few_step_timesteps(4, shift=1.0, boundary=0.9, steps_per_expert=(2, 2))
    assert sum(t >= 900 for t in aligned) == 2


def test_expert_for_timestep_at_boundary() -> None:
    assert expert_for_timestep(900.0, 0.9) == HIGH_NOISE_EXPERT
    assert expert_for_timestep(899.999, 0.9) == LOW_NOISE_EXPERT
    t = torch.tensor([[1000.0, 900.0], [899.999, 0.0]])
    assert expert_for_timestep(t, 0.9).tolist() == [[0, 0], [1, 1]]


def test_training_sigmas() -> None:
    def draw(**kw: object) -> Tensor:
        return sample_training_sigmas(64, 6, generator=torch.Generator().manual_seed(0), **kw)  # type: ignore[arg-type]

    shared = draw(shift=1.0, per_frame=False)
    assert shared.shape == (64, 6) and shared.dtype == torch.float32
    assert (shared == shared[:, :1]).all()
    per_frame = draw(shift=1.0, per_frame=True)
    assert (per_frame.std(dim=1) > 0).all()
    assert ((per_frame >= 0) & (per_frame < 1)).all()
    assert torch.equal(per_frame, draw(shift=1.0, per_frame=True))  # seeded
    # shift > 1 pushes the same uniform draws towards high noise.
    assert (draw(shift=5.0, per_frame=True) >= per_frame).all()
    blocks = draw(shift=1.0, per_frame=True, frames_per_block=4)
    assert (blocks[:, :4] == blocks[:, :1]).all() and (blocks[:, 4:] == blocks[:, 4:5]).all()
    assert not (blocks[:, 0] == blocks[:, 4]).all()
    logit = draw(shift=1.0, per_frame=True, distribution="logit_normal")
    assert ((logit > 0) & (logit < 1)).all()
    assert abs(logit.mean().item() - 0.5) < 0.05


@pytest.mark.parametrize(
    "call",
    [
        lambda: few_step_timesteps(0, shift=5.0),
        lambda: few_step_timesteps(4, shift=0.0),
        lambda: few_step_timesteps(4, shift=-1.0),
        lambda: few_step_timesteps(4, shift=5.0, boundary=0.0),
        lambda: few_step_timesteps(4, shift=5.0, boundary=1.0),
        lambda: few_step_timesteps(4, shift=5.0, boundary=1.5),
        lambda: few_step_timesteps(4, shift=5.0, boundary=0.9, steps_per_expert=(2, 1)),
        lambda: few_step_timesteps(4, shift=5.0, boundary=0.9, steps_per_expert=(0, 4)),
        lambda: few_step_timesteps(4, shift=5.0, steps_per_expert=(2, 2)),
        lambda: euler_timesteps(0, shift=5.0),
        lambda: shift_sigma(0.5, 0.0),
        lambda: expert_for_timestep(500.0, 1.0),
        lambda: sample_training_sigmas(2, 3, shift=0.0, per_frame=True),
        lambda: sample_training_sigmas(2, 3, shift=1.0, per_frame=True, distribution="beta"),  # type: ignore[arg-type]
        lambda: euler_sample(lambda x, t: x, latents(0), []),
        lambda: euler_sample(lambda x, t: x, latents(0), [500.0, 750.0]),
        lambda: few_step_sample(lambda x, t: x, latents(0), [1000.0, 0.0]),
    ],
)
def test_bad_inputs_raise(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


# --- samplers and guidance -----------------------------------------------------------------


def oracle_velocity(x0: Tensor):  # type: ignore[no-untyped-def]
    """Velocity field whose data distribution is the single point ``x0``: ``v = (x_t − x0)/σ``."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        return velocity_from_x0(x_t, x0, timesteps_to_sigmas(t))

    return denoise


def test_euler_recovers_point_data() -> None:
    x0 = latents(0)
    out = euler_sample(oracle_velocity(x0), latents(1), euler_timesteps(8, shift=3.0))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_euler_maps_noise_to_gaussian_data_variance() -> None:
    data_std = 0.5

    def gaussian_velocity(x_t: Tensor, t: Tensor) -> Tensor:
        # x0 ~ N(0, s²): E[ε − x0 | x_t] = (σ − (1 − σ)s²) / ((1 − σ)²s² + σ²) · x_t
        s = expand_sigma(timesteps_to_sigmas(t), x_t)
        var = data_std**2
        return (s - (1 - s) * var) / ((1 - s) ** 2 * var + s**2) * x_t

    noise = latents(1, (4, 4, 8, 16, 16))
    out = euler_sample(gaussian_velocity, noise, euler_timesteps(100, shift=1.0))
    assert out.var().item() == pytest.approx(data_std**2, rel=0.05)
    # The analytic ODE map is linear: every element is scaled by one factor, ≈ data_std.
    ratio = out / noise
    assert ratio.std().item() < 1e-4
    assert ratio.mean().item() == pytest.approx(data_std, rel=0.03)


def test_few_step_oracle_returns_x0_and_renoises_to_each_level() -> None:
    x0 = torch.zeros(B, C, F, 32, 32)
    timesteps = few_step_timesteps(4, shift=5.0, boundary=0.9)
    seen: list[tuple[float, float]] = []
    oracle = oracle_velocity(x0)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        assert t.shape == (B,)
        seen.append((t[0].item(), x_t.std().item()))
        return oracle(x_t, t)

    out = few_step_sample(
        denoise, latents(1, x0.shape), timesteps, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert [t for t, _ in seen] == pytest.approx(timesteps)
    for t, std in seen:  # x0 = 0, so x_t = σ·ε must have std σ
        assert std == pytest.approx(t / 1000, rel=0.05)


def test_few_step_with_nonzero_data() -> None:
    x0 = latents(5)
    out = few_step_sample(oracle_velocity(x0), latents(6), [1000.0, 500.0])
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_cfg_combine_and_guided_denoiser() -> None:
    cond, uncond = latents(0), latents(1)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), uncond + 3 * (cond - uncond))

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        return x + 1

    def uncond_fn(x: Tensor, t: Tensor) -> Tensor:
        return x

    x, t = latents(2), torch.full((B,), 500.0)
    assert guided_denoiser(cond_fn, uncond_fn, scale=1.0) is cond_fn
    torch.testing.assert_close(guided_denoiser(cond_fn, uncond_fn, scale=4.0)(x, t), x + 4)
