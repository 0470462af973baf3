"""World model invariants (issue 3): cache == full forward, bounded cache, recache, MoE boundary."""

from __future__ import annotations

import pytest
import torch

from worldloop.model import Conditioning, WorldModel, build_world_model, i2v_condition, tiny
from worldloop.model.arch.dit import count_parameters
from worldloop.model.config import CausalConfig, a14b

Z = tiny().latent_channels  # latent channels of the tiny preset


def _model(anchor: float | None = None, **causal: int) -> WorldModel:
    torch.manual_seed(0)
    cfg = tiny().model_copy(update={"i2v_anchor": anchor})
    if causal:
        cfg = cfg.model_copy(update={"causal": CausalConfig(**causal)})
    model = WorldModel(cfg).eval()
    # Zero-initialised outputs would make every comparison trivially equal: give them weights.
    for expert in model.experts:
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    torch.nn.init.normal_(model.camera_encoder.out.weight, std=0.05)
    return model


def _conditioning(batch: int, *, seed: int, instruction: bool = True) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 6, 384, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[0, 4:] = False
    if not instruction:
        return Conditioning(text, mask)
    inst = torch.randn(batch, 3, 384, generator=g)
    return Conditioning(text, mask, inst, torch.ones(batch, 3, dtype=torch.bool))


def _clip(
    model: WorldModel, *, batch: int, blocks: int, size: int = 32, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    t = 1 + blocks * cfg.causal.block_frames
    h = size // 8
    latents = torch.randn(batch, Z, t, h, h, generator=g)
    # clean sink frame, then one noise level per block (as in teacher / diffusion forcing)
    levels = torch.rand(batch, blocks, generator=g) * 1000
    timesteps = torch.cat([torch.zeros(batch, 1), levels.repeat_interleave(cfg.causal.block_frames, 1)], 1)
    still = torch.randn(batch, Z, 1, h, h, generator=g)  # what the I2V channels of frames ≥ 1 carry
    cond = i2v_condition(latents[:, :, :1], num_frames=t, temporal_stride=4, still=still)
    camera = torch.randn(batch, t, 24, size, size, generator=g)
    return {"latents": latents, "timesteps": timesteps, "cond": cond, "camera": camera}


def _block(clip: dict[str, torch.Tensor], model: WorldModel, b: int) -> dict[str, torch.Tensor]:
    layout = model.layout(1)
    s = slice(layout.frame_start(b), layout.frame_start(b) + layout.frames_in_block(b))
    return {
        "latents": clip["latents"][:, :, s],
        "timesteps": clip["timesteps"][:, s],
        "cond": clip["cond"][:, :, s],
        "camera": clip["camera"][:, s],
    }


@pytest.mark.parametrize(("expert", "anchor"), [(0, None), (1, None), (0, 0.5)])
def test_cached_steps_equal_full_block_causal_forward(expert: int, anchor: float | None) -> None:
    model = _model(anchor, block_frames=2, num_sink_blocks=1, window_blocks=2)
    blocks = 6  # more blocks than the window: eviction and the ring buffer are exercised
    clip = _clip(model, batch=2, blocks=blocks)
    # route every sample to `expert` by choosing noise levels on its side of the boundary
    clip["timesteps"] = clip["timesteps"].clamp(max=899.0) if expert else clip["timesteps"].clamp(min=950.0)
    cond = _conditioning(2, seed=1)
    with torch.no_grad():
        full = model(**clip, conditioning=cond)
        cache = model.new_cache(batch=2, height=32, width=32)
        model.set_context(cache, cond)
        steps = [
            model.forward_step(
                **_block(clip, model, b), block_index=b, cache=cache, expert=expert, update_cache=True
            )
            for b in range(blocks + 1)
        ]
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-4, rtol=0)
    assert full.abs().mean() > 1e-2  # the comparison is not between zeros


def test_extra_sink_blocks_and_window_mask() -> None:
    model = _model(block_frames=1, num_sink_blocks=2, window_blocks=1)
    clip = _clip(model, batch=1, blocks=5, seed=3)
    clip["timesteps"] = clip["timesteps"].clamp(max=899.0)
    cond = _conditioning(1, seed=2)
    with torch.no_grad():
        full = model(**clip, conditioning=cond)
        cache = model.new_cache(batch=1, height=32, width=32)
        model.set_context(cache, cond)
        steps = [
            model.forward_step(
                **_block(clip, model, b), block_index=b, cache=cache, expert=1, update_cache=True
            )
            for b in range(6)
        ]
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-4, rtol=0)
    # block 5 (frame 5) sees the two sinks (frames 0, 1), the one window block before it, and itself
    mask = model.block_mask(6, 1)
    assert mask[5].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert mask[2].nonzero().flatten().tolist() == [0, 1, 2]


def test_bidirectional_forward_sees_the_future() -> None:
    model = _model()
    clip = _clip(model, batch=1, blocks=2)
    cond = _conditioning(1, seed=0)
    edited = {k: v.clone() for k, v in clip.items()}
    edited["latents"][:, :, -1] += 1.0
    with torch.no_grad():
        causal_a, causal_b = model(**clip, conditioning=cond), model(**edited, conditioning=cond)
        bi_a = model(**clip, conditioning=cond, causal=False)
        bi_b = model(**edited, conditioning=cond, causal=False)
    assert torch.equal(causal_a[:, :, 0], causal_b[:, :, 0])
    assert not torch.allclose(bi_a[:, :, 0], bi_b[:, :, 0])


def _commit_stream(model: WorldModel, cache, blocks: range, *, seed: int) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    for b in blocks:
        f = cache.layout.frames_in_block(b)
        latents = torch.randn(1, Z, f, 4, 4, generator=g)
        cond = i2v_condition(latents[:, :, :1], num_frames=f, temporal_stride=4, frame_start=b)
        camera = torch.randn(1, f, 24, 32, 32, generator=g)
        model.commit_block(cache, block_index=b, latents=latents, cond=cond, camera=camera)


def test_cache_memory_is_constant_from_block_10_to_200() -> None:
    model = _model()
    cache = model.new_cache(batch=1, height=32, width=32)
    with torch.no_grad():
        model.set_context(cache, _conditioning(1, seed=0))
        _commit_stream(model, cache, range(0, 11), seed=0)
        at_10 = cache.nbytes()
        _commit_stream(model, cache, range(11, 201), seed=1)
    assert cache.nbytes() == at_10
    assert sorted(cache.history) == list(range(201 - model.cfg.causal.window_blocks, 201))
    assert cache.layout.capacity == model.cfg.cache_frames() * 4  # 4 tokens per 32x32 frame


def test_recache_equals_rebuilding_the_window_with_the_new_instruction() -> None:
    model = _model()
    old, new = _conditioning(1, seed=0), _conditioning(1, seed=9)
    with torch.no_grad():
        cache = model.new_cache(batch=1, height=32, width=32)
        model.set_context(cache, old)
        _commit_stream(model, cache, range(0, 8), seed=4)
        sink_before = cache.experts[0].keys[:, :, : cache.layout.sink_tokens].clone()
        assert model.recache(cache, new) == model.cfg.causal.window_blocks
        # reference: sinks written with the old instruction, window blocks recomputed with the new one
        ref = model.new_cache(batch=1, height=32, width=32)
        model.set_context(ref, old)
        _commit_stream(model, ref, range(0, 1), seed=4)
        model.set_context(ref, new)
        for b in sorted(cache.history):
            item = cache.history[b]
            model.commit_block(ref, block_index=b, latents=item.latents, cond=item.cond, camera=item.camera)
    for e in range(model.cfg.num_experts):
        torch.testing.assert_close(cache.experts[e].keys, ref.experts[e].keys, atol=1e-6, rtol=0)
        torch.testing.assert_close(cache.experts[e].values, ref.experts[e].values, atol=1e-6, rtol=0)
        for a, b in zip(cache.experts[e].context_keys, ref.experts[e].context_keys, strict=True):
            assert torch.equal(a, b)
    assert torch.equal(cache.experts[0].keys[:, :, : cache.layout.sink_tokens], sink_before)  # sinks kept
    window = slice(cache.layout.sink_tokens, None)
    assert not torch.allclose(cache.experts[0].keys[-1, :, window], sink_before.new_zeros(1))


def test_expert_switch_exactly_at_the_boundary() -> None:
    model = _model()
    assert model.cfg.boundary == 0.9
    assert model.expert_for(900.0) == 0 and model.expert_for(1000.0) == 0
    assert model.expert_for(899.999) == 1 and model.expert_for(0.0) == 1
    # forward routes each sample by its own noise level
    clip = _clip(model, batch=2, blocks=1)
    clip["timesteps"][0, 1:] = 900.0
    clip["timesteps"][1, 1:] = 899.999
    cond = _conditioning(2, seed=0)
    with torch.no_grad():
        out = model(**clip, conditioning=cond)
        x = torch.cat([clip["latents"], model.condition(clip["cond"], clip["camera"])], dim=1)
        ctx, mask = model.context_tokens(cond)
        cam = model.camera_encoder(clip["camera"])
        attn = model.block_mask(clip["latents"].shape[2], 4)
        for i, e in enumerate([0, 1]):
            expert = model.experts[e]
            y, _ = expert(
                x[i : i + 1],
                timesteps=clip["timesteps"][i : i + 1],
                frame_start=0,
                context_kv=expert.context_kv(ctx[i : i + 1]),
                context_mask=mask[i : i + 1],
                camera_tokens=cam[i : i + 1],
                attn_mask=attn,
            )
            torch.testing.assert_close(out[i : i + 1], y, atol=1e-5, rtol=0)


def test_parameter_groups_cover_the_model_once() -> None:
    model = _model()
    groups = model.parameter_groups()
    assert set(groups) == {"expert0", "expert1", "camera", "interaction"}
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_a14b_on_meta_has_14b_parameters_per_expert() -> None:
    model = build_world_model(a14b(), device="meta")
    counts = [count_parameters(e) for e in model.experts]
    assert len(counts) == 2
    assert all(13.9e9 < c < 14.5e9 for c in counts)
    assert counts[0] == a14b().parameters_per_expert()  # the analytic count is exact
    assert next(model.parameters()).is_meta


def test_camera_encoder_starts_at_zero_and_instruction_changes_output() -> None:
    torch.manual_seed(0)
    model = WorldModel(tiny()).eval()
    cam = torch.randn(1, 3, 24, 32, 32)
    assert torch.count_nonzero(model.camera_encoder(cam)) == 0
    model = _model()
    clip = _clip(model, batch=1, blocks=1)
    with torch.no_grad():
        a = model(**clip, conditioning=_conditioning(1, seed=0))
        b = model(**clip, conditioning=_conditioning(1, seed=0, instruction=False))
    assert not torch.allclose(a, b)


def test_an_expert_no_sample_chose_gets_zero_gradients_not_none() -> None:
    """Data-parallel ranks must reduce the same parameters whatever their samples' noise levels."""
    model = _model()
    clip = _clip(model, batch=2, blocks=1)
    clip["timesteps"][:, 1:] = 950.0  # both samples → the high-noise expert
    model(**clip, conditioning=_conditioning(2, seed=0)).square().mean().backward()
    idle = list(model.expert(1).parameters())
    assert all(p.grad is not None and not p.grad.any() for p in idle)
    assert any(p.grad is not None and p.grad.any() for p in model.expert(0).parameters())
    with torch.no_grad():  # inference does not pay for it
        out = model(**clip, conditioning=_conditioning(2, seed=0))
    assert out.grad_fn is None


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """Recomputing blocks in backward changes memory, not numbers (training-only, off in eval)."""
    from worldloop.model.arch.dit import set_gradient_checkpointing

    grads = []
    for enabled in (False, True):
        model = _model().train()
        assert set_gradient_checkpointing(model, enabled) == model.cfg.num_experts
        clip = _clip(model, batch=2, blocks=2)
        loss = model(**clip, conditioning=_conditioning(2, seed=0)).square().mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss0, g0), (loss1, g1) = grads
    assert torch.equal(loss0, loss1)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
