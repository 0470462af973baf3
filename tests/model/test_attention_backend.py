import importlib.util
import math

import pytest
import torch

from worldloop.model.arch.attention import AttentionBackend, attend, sage_available


def qkv(
    b: int = 2, h: int = 3, lq: int = 10, lk: int = 10, d: int = 16, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))  # type: ignore[return-value]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return (logits.softmax(dim=-1) @ v.double()).to(q.dtype)


def block_causal(num_blocks: int, block: int) -> torch.Tensor:
    """(L, L) bool: a token sees every token of its own block and of earlier blocks."""
    idx = torch.arange(num_blocks * block) // block
    return idx[:, None] >= idx[None, :]


def test_sdpa_matches_explicit_softmax() -> None:
    q, k, v = qkv(lq=7, lk=12)
    out = attend(q, k, v)
    assert out.shape == (2, 3, 7, 16)
    torch.testing.assert_close(out, reference(q, k, v, None), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "mask_shape",
    [(10, 10), (2, 1, 10, 10), (1, 3, 10, 10), (2, 3, 10, 10), (10,)],
)
def test_boolean_masks_broadcast(mask_shape: tuple[int, ...]) -> None:
    q, k, v = qkv(seed=1)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    mask[..., 0] = True  # every query row keeps at least one key
    out = attend(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_block_causal_mask() -> None:
    q, k, v = qkv(lq=12, lk=12, seed=2)
    mask = block_causal(4, 3)
    out = attend(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    # Block-causality: the first two blocks do not change when later blocks' keys/values do.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 5.0
    v2[:, :, 6:] -= 3.0
    out2 = attend(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(out2[:, :, :6], out[:, :, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(out2[:, :, 6:], out[:, :, 6:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_on_cpu_equals_sdpa(dtype: torch.dtype) -> None:
    q, k, v = (t.to(dtype) for t in qkv(d=64, seed=3))
    assert not sage_available(q, has_mask=False)
    assert torch.equal(attend(q, k, v, backend=AttentionBackend.auto), attend(q, k, v))
    assert torch.equal(attend(q, k, v, backend="auto"), attend(q, k, v))


def test_sage_on_cpu_raises_with_reason() -> None:
    q, k, v = (t.half() for t in qkv(d=64))
    with pytest.raises(ValueError, match="needs CUDA"):
        attend(q, k, v, backend=AttentionBackend.sage)


def test_bad_inputs_raise() -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match="must be bool"):
        attend(q, k, v, attn_mask=torch.zeros(10, 10))
    with pytest.raises(ValueError, match="does not broadcast"):
        attend(q, k, v, attn_mask=torch.ones(4, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        attend(q[:, :, :1], k, v, attn_mask=torch.ones(5, 10, dtype=torch.bool))  # may not grow Lq
    with pytest.raises(ValueError, match="matching B, H, D"):
        attend(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        attend(q[0], k[0], v[0])
    with pytest.raises(ValueError):
        attend(q, k, v, backend="flash")


CUDA_SAGE = torch.cuda.is_available() and importlib.util.find_spec("sageattention") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_SAGE, reason="needs CUDA and the sageattention package")
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sage_matches_sdpa_on_cuda(head_dim: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert sage_available(q, has_mask=False)
    assert not sage_available(q, has_mask=True)
    ref = attend(q, k, v).float()
    out = attend(q, k, v, backend=AttentionBackend.sage).float()
    # Sage quantises Q/K to int8: expect close, not bit-equal, for unit-normal inputs.
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
    assert (out - ref).abs().max() < 0.05
    # auto takes sage only where it is the faster kernel (pre-Hopper); on an H100 SDPA wins.
    faster = "sage" if torch.cuda.get_device_capability()[0] < 9 else "sdpa"
    assert torch.equal(attend(q, k, v, backend=AttentionBackend.auto), attend(q, k, v, backend=faster))


def test_sage_applies_to_self_attention_only() -> None:
    """Cross-attention always has a text padding mask, which SageAttention cannot take."""
    from worldloop.model import WorldModel, tiny
    from worldloop.model.arch.dit import set_attention_backend
    from worldloop.model.arch.transformer_block import CrossAttention, SelfAttention

    model = WorldModel(tiny())
    set_attention_backend(model, "sage")
    backends = {type(m): m.backend for m in model.modules() if isinstance(m, SelfAttention | CrossAttention)}
    assert backends == {SelfAttention: AttentionBackend.sage, CrossAttention: AttentionBackend.sdpa}
    set_attention_backend(model, "auto")
    assert {m.backend for m in model.modules() if isinstance(m, CrossAttention)} == {AttentionBackend.auto}
