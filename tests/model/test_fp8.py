from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worldloop.model.quant import FP8Linear, fp8_supported, quantize_fp8
from worldloop.model.quant import fp8 as fp8_module
from worldloop.model.quant.fp8 import FP8_MAX, quantize_rowwise

# e4m3 keeps 3 mantissa bits (relative rounding error ≤ 2⁻⁴ per element); with both operands quantised
# and errors averaging over K, unit-normal inputs land near 0.035 — 0.06 leaves margin, not slack.
REL_TOL = 0.06


def rel_err(y8: torch.Tensor, y: torch.Tensor) -> float:
    y8, y = y8.detach().float(), y.detach().float()
    return float((y8 - y).norm() / y.norm())


def linear(in_features: int = 64, out_features: int = 96, *, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def test_cpu_is_supported() -> None:
    assert fp8_supported(torch.device("cpu"))


def test_quantisation_is_saturating_and_per_row() -> None:
    x = torch.tensor([[1e6, -1e6, 1.0, 0.0], [0.5, -0.25, 0.125, 0.0], [0.0, 0.0, 0.0, 0.0]])
    x8, scale = quantize_rowwise(x)
    assert x8.dtype == torch.float8_e4m3fn and scale.shape == (3, 1)
    deq = x8.float() * scale
    assert torch.isfinite(deq).all()
    assert x8.float().abs().amax(dim=-1).tolist() == [FP8_MAX, FP8_MAX, 0.0]  # each row uses full range
    torch.testing.assert_close(deq[1], x[1])  # powers of two are exact in e4m3
    assert (deq[2] == 0).all()


def test_from_linear_stores_fp8_weight_with_channel_scales() -> None:
    lin = linear()
    layer = FP8Linear.from_linear(lin)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight.shape == (96, 64)
    assert layer.weight_scale.shape == (96,) and layer.weight_scale.dtype == torch.float32
    torch.testing.assert_close(layer.weight_scale, lin.weight.abs().amax(dim=1) / FP8_MAX)
    deq = layer.weight.float() * layer.weight_scale[:, None]
    assert rel_err(deq, lin.weight) < 0.05


@pytest.mark.parametrize("bias", [True, False])
def test_matches_fp32_linear(bias: bool) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(128, 64, bias=bias)
    x = torch.randn(32, 128)
    y8 = FP8Linear.from_linear(lin)(x)
    assert y8.dtype == torch.float32 and y8.shape == (32, 64)
    assert rel_err(y8, lin(x)) < REL_TOL


def test_3d_input_and_bf16() -> None:
    lin = linear(seed=2)
    layer = FP8Linear.from_linear(lin)
    x = torch.randn(2, 7, 64)
    y8 = layer(x)
    assert y8.shape == (2, 7, 96)
    torch.testing.assert_close(y8[1, 3], layer(x[1, 3:4])[0])  # per-token: rows are independent
    yb = layer(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and yb.shape == (2, 7, 96)
    assert rel_err(yb, lin(x)) < REL_TOL


def test_fallback_without_rowwise_scales_gives_same_output(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = FP8Linear.from_linear(linear(seed=8))
    x = torch.randn(2, 5, 64)
    y_rowwise = layer(x)
    probe = fp8_module._probe_scaled_mm
    monkeypatch.setattr(
        fp8_module, "_probe_scaled_mm", lambda dev, dtype, rowwise: not rowwise and probe(dev, dtype, rowwise)
    )
    torch.testing.assert_close(layer(x), y_rowwise, atol=1e-5, rtol=1e-5)


def test_empty_input() -> None:
    layer = FP8Linear.from_linear(linear())
    assert layer(torch.randn(0, 3, 64)).shape == (0, 3, 96)


def test_outlier_tokens_do_not_degrade_other_tokens() -> None:
    lin = linear(seed=3)
    torch.manual_seed(3)
    x = torch.randn(16, 64)
    # e4m3 spans ~2⁻⁹..448 (≈2·10⁵); a token 10⁵× larger than the rest overflows that span.
    x[0] *= 1e5
    y, y8 = lin(x), FP8Linear.from_linear(lin)(x)
    for row in range(16):
        assert rel_err(y8[row], y[row]) < REL_TOL, row
    # Reference: one per-tensor activation scale (even with fp32 weights) flushes the normal tokens.
    x_scale = x.abs().amax() / FP8_MAX
    x_tensorwise = (x / x_scale).to(torch.float8_e4m3fn).float() * x_scale
    assert rel_err(lin(x_tensorwise)[1:], y[1:]) > 3 * REL_TOL


def test_rejects_unaligned_and_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        FP8Linear.from_linear(nn.Linear(20, 32))
    layer = FP8Linear.from_linear(linear())
    with pytest.raises(ValueError, match="last dim 64"):
        layer(torch.randn(3, 32))
    with pytest.raises(ValueError, match="input must be"):
        layer(torch.randn(3, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="from_linear"):
        quantize_fp8(nn.Linear(32, 32))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 256)
        self.down = nn.Linear(256, 64)
        self.head = nn.Linear(64, 16)
        self.odd = nn.Linear(64, 12)  # not a multiple of 16: must stay nn.Linear
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.down(self.act(self.up(x)))
        return torch.cat([self.head(h), self.odd(h)], dim=-1)


def test_quantize_fp8_swaps_and_stays_close() -> None:
    torch.manual_seed(4)
    model = MLP()
    x = torch.randn(4, 8, 64)
    y = model(x)
    assert quantize_fp8(model) == 3
    assert isinstance(model.up, FP8Linear) and isinstance(model.down, FP8Linear)
    assert isinstance(model.head, FP8Linear) and type(model.odd) is nn.Linear
    assert rel_err(model(x), y) < REL_TOL
    assert quantize_fp8(model) == 0  # idempotent


def test_skip_predicate_and_min_features() -> None:
    model = MLP()
    seen: list[str] = []

    def skip(name: str, lin: nn.Linear) -> bool:
        seen.append(name)
        return name == "down"

    assert quantize_fp8(model, skip=skip, min_features=32) == 1  # head has 16 outputs < 32
    assert isinstance(model.up, FP8Linear)
    assert type(model.down) is nn.Linear and type(model.head) is nn.Linear
    assert seen == ["up", "down"]  # predicate only asked about layers the default rule keeps


def test_shared_linear_becomes_one_fp8_module() -> None:
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert quantize_fp8(model) == 1
    assert model[0] is model[2] and isinstance(model[0], FP8Linear)


def test_each_linear_is_freed_as_soon_as_it_is_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak memory is the model plus one layer: a 14B bf16 expert cannot afford a full second copy."""
    import gc
    import weakref

    model = nn.Sequential(*(nn.Linear(32, 32) for _ in range(4)))
    refs = [weakref.ref(layer) for layer in model]
    alive_at_swap: list[int] = []
    original = FP8Linear.from_linear.__func__  # type: ignore[attr-defined]

    def spy(cls: type[FP8Linear], layer: nn.Linear) -> FP8Linear:
        gc.collect()
        alive_at_swap.append(sum(r() is not None for r in refs))
        return original(cls, layer)

    monkeypatch.setattr(FP8Linear, "from_linear", classmethod(spy))
    assert quantize_fp8(model) == 4
    assert alive_at_swap == [4, 3, 2, 1]
    gc.collect()
    assert all(r() is None for r in refs)


def test_dtype_cast_keeps_fp8_weight_and_fp32_scale() -> None:
    layer = FP8Linear.from_linear(linear(seed=5))
    x = torch.randn(5, 64)
    y = layer(x)
    scale = layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(layer.weight_scale, scale)
    assert layer.bias is not None and layer.bias.dtype == torch.bfloat16
    assert rel_err(layer(x.bfloat16()), y) < 0.02


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = MLP()
    quantize_fp8(model)
    x = torch.randn(3, 64)
    path = tmp_path / "fp8.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_file(str(path))
    assert (
        loaded["up.weight"].dtype == torch.float8_e4m3fn and loaded["up.weight_scale"].dtype == torch.float32
    )
    torch.manual_seed(7)  # different init: everything must come from the file
    fresh = MLP()
    quantize_fp8(fresh)
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh(x), model(x))


def test_fused_quantisation_is_bit_identical_to_eager() -> None:
    """The compiled kernel (the CUDA default) must quantise exactly like the eager reference,
    for any token count with one compilation (dynamic shapes)."""
    g = torch.Generator().manual_seed(3)
    for rows, cols in ((300, 512), (17, 96)):
        x = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 100
        x[0] = 0.0  # an all-zero row takes the amax floor
        fused8, fused_scale = quantize_rowwise(x, fused=True)
        eager8, eager_scale = quantize_rowwise(x, fused=False)
        assert fused8.dtype == eager8.dtype == torch.float8_e4m3fn
        assert torch.equal(fused_scale, eager_scale)
        assert torch.equal(fused8.float(), eager8.float())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp8_linear_fused_path_matches_eager_and_reference() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(1024, 2048, device="cuda", dtype=torch.bfloat16)
    q = FP8Linear.from_linear(layer)
    x = torch.randn(333, 1024, device="cuda", dtype=torch.bfloat16)
    fused8, fused_scale = quantize_rowwise(x, fused=True)
    eager8, eager_scale = quantize_rowwise(x, fused=False)
    assert torch.equal(fused_scale, eager_scale) and torch.equal(fused8.float(), eager8.float())
    with torch.no_grad():
        ref = x.float() @ layer.weight.float().t() + layer.bias.float()
        y = q(x)
    assert y.dtype == torch.bfloat16
    assert float((y.float() - ref).norm() / ref.norm()) < 0.05
