"""FP8 (e4m3) linear layers via ``torch._scaled_mm``, applied as a module swap (DESIGN.md §5.4).

Scheme (inference only — there is no backward):

* **Weights**: ``float8_e4m3fn`` with one fp32 scale per output channel, ``scale = amax / 448``, so every
  row uses the full e4m3 range; a single outlier row does not flatten the others.
* **Activations**: quantised on the fly with one scale **per token** (row of the flattened input).
  Per-token rather than per-tensor because DiT activations carry a few tokens with very large norms
  (sink/reference-frame tokens, AdaLN-modulated rows); with one tensor-wide scale those tokens would
  push every other token into e4m3's subnormal range. Per-token costs nothing extra: the scale is
  applied in the matmul epilogue, and ``y[m, n] = sx[m] · sw[n] · (x8 @ w8ᵀ)[m, n]`` stays exact in form.
* Quantisation is **saturating**: values are clamped to ±448 before the cast (e4m3fn has no inf).

What ``torch._scaled_mm`` accepts (probed on torch 2.13 CPU): e4m3 × e4m3 with tensor-wise scalar scales
*and* row-wise ``(M, 1)`` / ``(1, N)`` fp32 scales, ``out_dtype`` fp32/bf16/fp16, any M/K/N. CUDA is
stricter: K and N multiples of 16, the second operand column-major (we pass ``weight.t()`` of the
row-major ``(N, K)`` weight), and row-wise scales only for some ``out_dtype``/GPU combinations. Whether
row-wise scales work is therefore probed once per ``(device, out_dtype)``; where they do not, we call
``_scaled_mm`` with unit scales and fp32 output (exactly the fp32 accumulator) and apply
``sx · sw`` afterwards — same numbers, one extra elementwise pass. The bias is always added after the
matmul in the output dtype, because fused bias support varies with dtype and scaling mode.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
# scaled_mm on CUDA needs K and N to be multiples of 16 (cuBLASLt fp8 alignment).
SCALED_MM_ALIGN = 16
# Floor on amax so all-zero rows/channels get a finite scale (they quantise to exact zeros anyway).
_AMAX_EPS = 1e-12
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_rowwise(x: Tensor, *, fused: bool | None = None) -> tuple[Tensor, Tensor]:
    """Saturating e4m3 quantisation with one scale per row.

    Args:
        x: ``(M, K)`` float tensor.
        fused: run it as one compiled kernel (default: on CUDA unless ``WORLDLOOP_FP8_FUSED=0``).
            Eagerly it is five passes over an fp32 copy of ``x``, which on an H100 cost more than the
            fp8 matmul itself (a 4,680×13,824 activation: ~1 ms vs 0.55 ms for the GEMM); fused it
            reads ``x`` twice and writes the fp8 result once.
    Returns:
        ``(x8, scale)``: ``x8`` ``(M, K)`` float8_e4m3fn and ``scale`` ``(M, 1)`` fp32 with
        ``x ≈ x8 · scale``.
    """
    if torch.compiler.is_compiling():  # inside a compiled region Inductor fuses the eager body anyway
        return _quantize_rowwise(x)
    if fused is None:
        fused = x.is_cuda and os.environ.get("WORLDLOOP_FP8_FUSED", "1") != "0"
    return (_fused_quantize() if fused else _quantize_rowwise)(x)


@functools.cache
def _fused_quantize() -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    # dynamic=True: one kernel for every token count (block 0 has fewer tokens than later blocks).
    return cast(
        Callable[[Tensor], tuple[Tensor, Tensor]],
        torch.compile(_quantize_rowwise, dynamic=True, fullgraph=True),
    )


def _quantize_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp_min(_AMAX_EPS) / FP8_MAX
    x8 = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return x8, scale


@functools.cache
def _probe_scaled_mm(device_name: str, out_dtype: torch.dtype, rowwise: bool) -> bool:
    """Whether a tiny ``_scaled_mm`` call with this scaling mode runs on ``device_name`` (cached)."""
    device = torch.device(device_name)
    try:
        a = torch.ones(16, 16, device=device).to(FP8_DTYPE)
        b = torch.ones(16, 16, device=device).to(FP8_DTYPE)
        if rowwise:
            sa, sb = torch.ones(16, 1, device=device), torch.ones(1, 16, device=device)
        else:
            sa = sb = torch.ones((), device=device)
        out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
        return bool(torch.allclose(out.float(), torch.full_like(out.float(), 16.0)))
    except (RuntimeError, NotImplementedError, TypeError, AttributeError) as err:
        logger.debug("scaled_mm probe failed on %s (%s, rowwise=%s): %s", device, out_dtype, rowwise, err)
        return False


@torch.compiler.assume_constant_result
def _rowwise_supported(device_name: str, out_dtype: torch.dtype) -> bool:
    """The row-wise probe as a compile-time constant: under ``torch.compile`` (e.g. compiled DiT blocks)
    Dynamo calls it once while tracing and bakes the answer in, instead of tracing the probe's matmul."""
    return _probe_scaled_mm(device_name, out_dtype, True)


def fp8_supported(device: torch.device) -> bool:
    """Whether :class:`FP8Linear` can run on ``device``.

    CUDA needs compute capability ≥ 8.9 (Ada/Hopper fp8 tensor cores); any device must also pass a tiny
    tensor-wise ``_scaled_mm`` probe (CPU does in torch ≥ 2.5).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.cuda.get_device_capability(device) < (8, 9):
            return False
    elif device.type != "cpu":
        return False
    return _probe_scaled_mm(str(device), torch.float32, False)


def scaled_matmul(
    x8: Tensor, x_scale: Tensor, w8: Tensor, w_scale: Tensor, *, out_dtype: torch.dtype
) -> Tensor:
    """``(x8 · x_scale) @ (w8 · w_scale)ᵀ`` in ``out_dtype``.

    Args:
        x8: ``(M, K)`` e4m3 activations; x_scale: ``(M, 1)`` fp32.
        w8: ``(N, K)`` e4m3 weight (row-major, so ``w8.t()`` is the column-major operand cuBLAS wants);
            w_scale: ``(N,)`` fp32.
    Returns:
        ``(M, N)`` in ``out_dtype``.
    """
    if _rowwise_supported(str(x8.device), out_dtype):
        return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=out_dtype)
    # Row-wise scales unsupported here: unit scales + fp32 output is the raw accumulator, scale after.
    one = torch.ones((), device=x8.device)
    acc = torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    return (acc * x_scale * w_scale.view(1, -1)).to(out_dtype)


class FP8Linear(nn.Module):
    """Drop-in inference replacement for ``nn.Linear`` with an e4m3 weight (see module docstring).

    State dict: ``weight`` ``(out, in)`` float8_e4m3fn, ``weight_scale`` ``(out,)`` fp32 and ``bias``
    ``(out,)`` (if any) — all plain tensors, so it round-trips through safetensors.
    """

    weight: Tensor
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size <= 0 or size % SCALED_MM_ALIGN:
                raise ValueError(
                    f"FP8Linear needs {name} to be a positive multiple of {SCALED_MM_ALIGN} "
                    f"(torch._scaled_mm alignment), got {size}; keep this layer in high precision"
                )
        self.in_features = in_features
        self.out_features = out_features
        # Buffers, not Parameters: the layer is frozen (no fp8 backward), and buffers keep the fp8
        # tensors out of optimisers and `parameters()` counts.
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8_DTYPE))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        """Quantise ``linear``'s weight per output channel (``scale = amax / 448``, saturating)."""
        out_features, in_features = linear.weight.shape
        layer = cls(in_features, out_features, bias=linear.bias is not None)
        with torch.no_grad():
            w8, scale = quantize_rowwise(linear.weight.detach(), fused=False)  # once per layer
            layer.weight = w8
            layer.weight_scale = scale.view(-1).contiguous()
            if linear.bias is not None:
                layer.bias = linear.bias.detach().clone()
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_features)`` → ``(..., out_features)`` in ``x.dtype`` (fp32, bf16 or fp16)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"FP8Linear expects last dim {self.in_features}, got input shape {tuple(x.shape)}"
            )
        if x.dtype not in _OUT_DTYPES:
            raise ValueError(f"FP8Linear input must be one of {_OUT_DTYPES}, got {x.dtype}")
        lead = x.shape[:-1]
        if x.numel() == 0:  # scaled_mm rejects the degenerate strides of an empty (0, 1) scale
            return x.new_zeros(*lead, self.out_features)
        x8, x_scale = quantize_rowwise(x.reshape(-1, self.in_features))  # (M, K), (M, 1)
        y = scaled_matmul(x8, x_scale, self.weight, self.weight_scale, out_dtype=x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FP8Linear:
        # `module.to(torch.bfloat16)` / `.half()` would otherwise cast the fp8 weight (fp8 counts as
        # floating point) and round the fp32 scales; keep their dtypes and let `fn` move them only.
        scale = self.weight_scale
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self.weight.dtype != FP8_DTYPE:  # exact: every e4m3 value is representable in fp16/bf16/fp32
            self.weight = self.weight.to(FP8_DTYPE)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = scale.to(self.weight_scale.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def _default_skip(linear: nn.Linear, min_features: int) -> bool:
    out_features, in_features = linear.weight.shape
    return any(n % SCALED_MM_ALIGN or n < min_features for n in (in_features, out_features))


def quantize_fp8(
    model: nn.Module,
    *,
    skip: Callable[[str, nn.Linear], bool] | None = None,
    min_features: int = 16,
) -> int:
    """Swap every ``nn.Linear`` in ``model`` for an :class:`FP8Linear`, in place.

    Kept in high precision: layers with in/out features not a multiple of 16 or below
    ``min_features``, and any for which ``skip(qualified_name, linear)`` is true (e.g. the final
    projection to latent channels). Only exact ``nn.Linear`` instances are swapped — subclasses such as
    ``nn.MultiheadAttention.out_proj`` are read by their owner's weight, not called. A Linear shared by
    several parents is replaced by one shared FP8Linear.

    Returns:
        How many distinct Linear modules were swapped.
    """
    if type(model) is nn.Linear:
        raise ValueError(
            "quantize_fp8 swaps children in place; for a bare nn.Linear use FP8Linear.from_linear"
        )
    # Only (parent, name) pairs are collected, never the Linear modules themselves: each swap then
    # frees its high-precision weight at once, so peak memory is the model plus one layer (a 14B
    # expert in bf16 would otherwise need another half of itself in fp8 before anything is freed).
    swaps: list[tuple[nn.Module, str]] = []
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        # `_modules` rather than `named_children()`: the latter hides a child registered twice.
        for child_name, child in list(parent._modules.items()):
            if type(child) is not nn.Linear:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if _default_skip(child, min_features) or (skip is not None and skip(name, child)):
                logger.debug("fp8: keeping %s in high precision", name)
                continue
            swaps.append((parent, child_name))
    # A Linear shared by several parents maps to one FP8Linear. Keyed by id() of a module that stays
    # alive until its last parent is swapped, so the key cannot be reused while it can still be looked up.
    replaced: dict[int, FP8Linear] = {}
    for parent, child_name in swaps:
        child = parent._modules[child_name]
        assert child is not None
        if id(child) not in replaced:
            replaced[id(child)] = FP8Linear.from_linear(cast(nn.Linear, child))
        setattr(parent, child_name, replaced[id(child)])
        del child
    logger.info("fp8: swapped %d Linear layers, kept %d", len(replaced), _count_linear(model))
    return len(replaced)


def _count_linear(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())
