"""FP8Linear vs fp32 nn.Linear on CPU (tokens=1024, 1024→4096).

CPU speed is not the point — torch's CPU ``_scaled_mm`` has no fp8 hardware behind it and is typically
slower than an fp32 GEMM. The number that carries over to the GPU is the relative error; the speed-up
(and the halved weight memory vs bf16) only shows on fp8 tensor cores (Ada/Hopper).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from worldloop.model.quant import FP8Linear


def _best_of(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up: allocator, lazy probes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(tokens: int = 1024, in_features: int = 1024, out_features: int = 4096, repeats: int = 5) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    fp8 = FP8Linear.from_linear(linear)
    x = torch.randn(tokens, in_features)
    with torch.inference_mode():
        y, y8 = linear(x), fp8(x)
        rel = float((y8 - y).norm() / y.norm())
        t32 = _best_of(lambda: linear(x), repeats)
        t8 = _best_of(lambda: fp8(x), repeats)
    flops = 2 * tokens * in_features * out_features
    print(
        f"FP8Linear vs nn.Linear, tokens={tokens}, {in_features}->{out_features}, CPU, "
        f"{torch.get_num_threads()} threads / {os.cpu_count()} CPUs, best of {repeats}"
    )
    print(f"  fp32 nn.Linear   {t32 * 1e3:8.1f} ms   {flops / t32 / 1e9:7.1f} GFLOP/s")
    print(f"  FP8Linear        {t8 * 1e3:8.1f} ms   {flops / t8 / 1e9:7.1f} GFLOP/s")
    print(f"  time ratio fp8/fp32 {t8 / t32:.2f}x  (CPU; the gain is on fp8 tensor cores)")
    print(f"  relative error ||y8 - y|| / ||y|| = {rel:.4f}")
    print(
        f"  weight bytes: fp8+scales {fp8.weight.nbytes + fp8.weight_scale.nbytes:,} vs fp32 "
        f"{linear.weight.nbytes:,}"
    )


if __name__ == "__main__":
    main()
