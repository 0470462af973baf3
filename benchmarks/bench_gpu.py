"""GPU numbers in one run: FP8 GEMMs, SageAttention, real-time rollout at 480p, training MFU.

Run on a CUDA machine: ``python -m benchmarks.bench_gpu --out results.json`` (``--out DIR/`` names the
file after the device and the date); without CUDA it refuses, unless ``--quick``, which runs every
section on tiny shapes on the CPU to check the script itself. ``--only A B`` runs those sections alone.
Nothing is asserted; every number is measured in this run, timed after warm-up, and printed with the
device it ran on; the JSON is rewritten as sections finish.

Issue 19's real-time goal (``small`` 480×832 frames/s: eager / compiled blocks / compiled step with CUDA
graphs, bf16 and FP8, with and without overlapped decode; sp=2 over NCCL against one device) is one
command, 6–8 minutes on one H100 (:mod:`benchmarks.bench_realtime`)::

    python -m benchmarks.bench_gpu --only realtime sp --out benchmarks/results/

Sections (each independent: one failing prints its error and the rest still run):

* ``gemm``       bf16 8192³ matmul — the card's reachable rate, the yardstick for the rest.
* ``fp8``        :class:`FP8Linear` vs bf16 ``nn.Linear`` at the a14b/small layer shapes for one
                 480p block (4,680 tokens): time, TFLOP/s, relative error vs an fp32 reference, and the
                 matmul alone (pre-quantised input) to show what on-the-fly quantisation costs.
* ``attention``  SDPA (flash) vs SageAttention for a rollout block attending to its KV cache; error vs
                 an fp32 reference.
* ``rollout``    :class:`Rollout` frames/s at 480×832 with VAE decode included, for the ``small`` preset
                 (bf16 sdpa / bf16 sage / fp8 + sage, with the output difference each switch makes)
                 and the ``a14b`` preset in FP8 (two 14B experts do not fit 80 GB in bf16 with the cache).
* ``train``      one training step (forward + backward + AdamW) of the ``small`` preset on an 81-frame
                 480p clip with activation checkpointing: tokens/s and model-FLOP utilisation.
* ``realtime``, ``sp``  issue 19 (above; :mod:`benchmarks.bench_realtime`).

Weights are random: speed does not depend on their values, quality numbers here are only the
differences the speed switches make.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from worldloop.model import Conditioning, Rollout, WorldModel, i2v_condition, load_preset
from worldloop.model.arch.attention import AttentionBackend, attend, sage_available
from worldloop.model.arch.dit import compile_blocks, set_attention_backend, set_gradient_checkpointing
from worldloop.model.camera import parse_action
from worldloop.model.config import CompileMode, ModelConfig
from worldloop.model.quant import FP8Linear, quantize_fp8
from worldloop.model.quant.fp8 import fp8_supported, quantize_rowwise, scaled_matmul
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE

# Dense bf16 tensor-core peak of the H100 SXM (no sparsity), NVIDIA's datasheet: the MFU denominator.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}

RESULTS: dict[str, Any] = {}
OUT: list[Path] = []  # where save_results writes (set by main from --out)
# bf16 on CUDA; fp32 on CPU unless --bf16 (which checks the bf16 code paths without a GPU).
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 5) -> float:
    """Mean seconds per call after ``warmup`` calls (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct modules directly on ``device`` in ``dtype`` (a 14B expert never visits the host)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def section(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any, **kwargs: Any) -> None:
            print(f"\n== {name} ==", flush=True)
            started = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # one section failing must not lose the others' numbers
                traceback.print_exc()
                RESULTS.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(f"   ({name}: {time.perf_counter() - started:.1f} s)", flush=True)

        return run

    return wrap


def save_results() -> None:
    """Write RESULTS to the --out file now (sections call it as they finish: a run cut short keeps them)."""
    for path in OUT:
        path.write_text(json.dumps(RESULTS, indent=2, default=str))


def results_path(out: str, device: torch.device) -> Path:
    """``out`` itself, or for a folder (an existing one, or a path ending in /) a file in it named after
    the device and the time: ``gpu-nvidia-h100-80gb-hbm3-2026-12-04-153000.json``."""
    path = Path(out)
    if not (out.endswith("/") or path.is_dir()):
        return path
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path / f"gpu-{slug}-{stamp}.json"


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = float((a.float() - b.float()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


# -- sections -----------------------------------------------------------------------------------------
@section("env")
def env(device: torch.device) -> None:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    try:
        from importlib.metadata import version

        import sageattention  # noqa: F401

        info["sageattention"] = version("sageattention")
    except ImportError:
        info["sageattention"] = None
    info["fp8_supported"] = fp8_supported(device)
    RESULTS["env"] = info
    print("  " + ", ".join(f"{k}={v}" for k, v in info.items()))


@section("gemm")
def gemm(device: torch.device, n: int) -> None:
    dtype = DTYPE[device.type]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, warmup=3, repeats=10)
    RESULTS["gemm"] = {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 / t / 1e12}
    print(f"  {dtype} {n}^3 matmul: {t * 1e3:.2f} ms = {2 * n**3 / t / 1e12:.0f} TFLOP/s")


@section("fp8")
def fp8(device: torch.device, tokens: int, shapes: list[tuple[int, int]]) -> None:
    dtype = DTYPE[device.type]
    rows = []
    for k, n in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(k, n, device=device, dtype=dtype)
        q = FP8Linear.from_linear(linear)
        x = torch.randn(tokens, k, device=device, dtype=dtype)
        with torch.no_grad():
            ref = x.float() @ linear.weight.float().t() + linear.bias.float()
            e_bf16, e_fp8 = rel_err(linear(x), ref), rel_err(q(x), ref)
            t_lin = timed(functools.partial(linear, x), device)
            t_q = timed(functools.partial(q, x), device)
            x8, sx = quantize_rowwise(x)
            matmul = functools.partial(scaled_matmul, x8, sx, q.weight, q.weight_scale, out_dtype=dtype)
            t_mm = timed(matmul, device)
            t_quant = timed(functools.partial(quantize_rowwise, x), device)
        flops = 2 * tokens * k * n
        row = {
            "tokens": tokens,
            "in": k,
            "out": n,
            "linear_ms": t_lin * 1e3,
            "fp8_ms": t_q * 1e3,
            "fp8_matmul_only_ms": t_mm * 1e3,
            "quantize_ms": t_quant * 1e3,
            "linear_tflops": flops / t_lin / 1e12,
            "fp8_tflops": flops / t_q / 1e12,
            "fp8_matmul_only_tflops": flops / t_mm / 1e12,
            "speedup": t_lin / t_q,
            "rel_err_linear": e_bf16,
            "rel_err_fp8": e_fp8,
        }
        rows.append(row)
        print(
            f"  {tokens}x{k}->{n}: {dtype} {t_lin * 1e3:.3f} ms ({row['linear_tflops']:.0f} TF/s) | "
            f"FP8Linear {t_q * 1e3:.3f} ms ({row['fp8_tflops']:.0f} TF/s, {row['speedup']:.2f}x) | "
            f"fp8 matmul alone {t_mm * 1e3:.3f} ms ({row['fp8_matmul_only_tflops']:.0f} TF/s), "
            f"quantise {t_quant * 1e3:.3f} ms | "
            f"rel err {e_bf16:.4f} vs {e_fp8:.4f}"
        )
    RESULTS["fp8"] = rows


@section("attention")
def attention(device: torch.device, cases: list[tuple[str, int, int, int, int]]) -> None:
    dtype = DTYPE[device.type]
    rows = []
    for name, heads, lq, lk, d in cases:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, heads, n, d, device=device, dtype=dtype, generator=g) for n in (lq, lk, lk))
        with torch.no_grad():
            ref = _reference_attention(q, k, v)
            flops = 4 * heads * lq * lk * d
            row: dict[str, Any] = {"case": name, "heads": heads, "lq": lq, "lk": lk, "d": d}
            for backend in ("sdpa", "sage"):
                if backend == "sage" and not sage_available(q, has_mask=False):
                    continue
                b = AttentionBackend(backend)
                out = attend(q, k, v, backend=b)
                t = timed(functools.partial(attend, q, k, v, backend=b), device)
                row[backend] = {"ms": t * 1e3, "tflops": flops / t / 1e12, "rel_err": rel_err(out, ref)}
        rows.append(row)
        text = " | ".join(
            f"{b} {row[b]['ms']:.2f} ms ({row[b]['tflops']:.0f} TF/s, err {row[b]['rel_err']:.4f})"
            for b in ("sdpa", "sage")
            if b in row
        )
        ratio = f", sage {row['sdpa']['ms'] / row['sage']['ms']:.2f}x faster" if "sage" in row else ""
        print(f"  {name}: H={heads} Lq={lq} Lk={lk} D={d}: {text}{ratio}")
    RESULTS["attention"] = rows


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """fp32 attention without materialising Lq×Lk per head at once (chunked over heads)."""
    outs = []
    for h in range(q.shape[1]):
        s = q[:, h : h + 1].float() @ k[:, h : h + 1].float().transpose(-1, -2) / math.sqrt(q.shape[-1])
        outs.append(s.softmax(-1) @ v[:, h : h + 1].float())
    return torch.cat(outs, dim=1)


def _build(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> tuple[WorldModel, CausalVideoVAE]:
    torch.manual_seed(0)
    with building_on(device, dtype):
        model = WorldModel(cfg).eval().requires_grad_(False)
        for i in range(cfg.num_experts):  # zero-initialised heads would output constant velocities
            nn.init.normal_(model.expert(i).head.head.weight, std=0.02)
        vae = CausalVideoVAE(cfg.vae).eval().requires_grad_(False)
    return model, vae


def make_rollout(
    model: WorldModel,
    vae: CausalVideoVAE,
    *,
    height: int,
    width: int,
    compile: CompileMode = "off",
    backend: str = "inductor",
) -> Rollout:
    """The benchmarks' stream: hashed text, block noise seeded 0 (every run draws the same noise)."""
    return Rollout(
        model,
        vae=vae,
        text_encoder=HashingEncoder(dim=model.cfg.text_dim),
        height=height,
        width=width,
        generator=torch.Generator().manual_seed(0),
        compile=compile,
        compile_backend=backend,
    )


def _fp8(model: WorldModel, device: torch.device) -> int:
    swapped = 0
    for i in range(model.cfg.num_experts):  # expert by expert: the bf16 weights are freed as we go
        swapped += quantize_fp8(model.expert(i), skip=lambda name, _: name.endswith("head.head"))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return swapped


def _stream(
    model: WorldModel,
    vae: CausalVideoVAE,
    *,
    height: int,
    width: int,
    blocks: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, Any]:
    """Run ``blocks`` blocks after ``warmup``; frames/s with VAE decode included, plus the video."""
    rollout = make_rollout(model, vae, height=height, width=width)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    image = image.to(device=device, dtype=model.dtype)
    _sync(device)
    t0 = time.perf_counter()
    state, first = rollout.start(image, prompt="a torch-lit stone corridor")
    _sync(device)
    start_s = time.perf_counter() - t0
    actions = [parse_action("w", mouse_dx=0.4)] * rollout.frames_per_block
    frames = [first]
    per_block = []
    for i in range(blocks + warmup):
        t0 = time.perf_counter()
        frames.append(rollout.step(state, actions))
        _sync(device)
        if i >= warmup:  # warm-up: kernel selection, allocator, compilation while the cache fills
            per_block.append(time.perf_counter() - t0)
    # The VAE's share, measured on the warm decode cache with a block-sized latent.
    cfg = model.cfg
    h, w = cfg.latent_size(height, width)
    latent = torch.randn(
        1, cfg.latent_channels, cfg.causal.block_frames, h, w, device=device, dtype=model.dtype
    )
    with torch.no_grad():
        decode = timed(lambda: vae.decode_step(latent, state.decode_cache), device, warmup=1, repeats=3)
    block_s = sorted(per_block)[len(per_block) // 2]
    return {
        "start_s": start_s,
        "block_ms": block_s * 1e3,
        "frames_per_block": rollout.frames_per_block,
        "fps": rollout.frames_per_block / block_s,
        "vae_decode_ms": decode * 1e3,
        "steps": len(rollout.timesteps),
        "tokens_per_block": cfg.tokens_per_frame(height, width) * cfg.causal.block_frames,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "video": torch.cat(frames[:4], dim=2).float().cpu(),  # the same first blocks in every run
    }


def _report(label: str, r: dict[str, Any]) -> None:
    mem = f", peak {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else ""
    print(
        f"  {label}: {r['block_ms']:.0f} ms/block of {r['frames_per_block']} frames "
        f"-> {r['fps']:.1f} frames/s "
        f"({r['steps']} steps + clean pass + VAE decode {r['vae_decode_ms']:.0f} ms; "
        f"{r['tokens_per_block']} tokens/block; start {r['start_s']:.2f} s{mem})",
        flush=True,
    )


@section("rollout-small")
def rollout_small(device: torch.device, preset: str, height: int, width: int, blocks: int) -> None:
    cfg = load_preset(preset)
    dtype = DTYPE[device.type]
    model, vae = _build(cfg, device, dtype)
    runs: dict[str, dict[str, Any]] = {}
    backends = ["sdpa", "sage"] if device.type == "cuda" else ["sdpa"]
    swapped = 0
    for precision in (dtype_name(dtype), "fp8"):
        if precision == "fp8":
            swapped = _fp8(model, device)
        for backend in backends:
            set_attention_backend(model, backend)
            label = f"{precision}+{backend}"
            try:
                runs[label] = _stream(model, vae, height=height, width=width, blocks=blocks, device=device)
            except Exception as exc:  # e.g. a kernel that does not build on this GPU: keep the others
                traceback.print_exc()
                RESULTS.setdefault("errors", {})[f"rollout {preset} {label}"] = f"{type(exc).__name__}: {exc}"
    # Regional torch.compile of the DiT blocks (bf16 weights again: rebuild, the FP8 swap is in place).
    del model
    gc.collect()
    model, vae = _build(cfg, device, dtype)
    compile_blocks(model)
    warm = 2 + cfg.causal.num_sink_blocks + cfg.causal.window_blocks  # every cache fill level compiles
    label = f"{dtype_name(dtype)}+sdpa+compiled"
    set_attention_backend(model, "sdpa")
    try:
        runs[label] = _stream(
            model, vae, height=height, width=width, blocks=blocks, device=device, warmup=warm
        )
    except Exception as exc:
        traceback.print_exc()
        RESULTS.setdefault("errors", {})[f"rollout {preset} {label}"] = f"{type(exc).__name__}: {exc}"
    if not runs:
        return
    base = next(iter(runs.values()))["video"]
    out = {}
    for label, r in runs.items():
        _report(f"{preset} {height}x{width} {label}", r)
        r["psnr_vs_first_db"] = psnr(r.pop("video"), base)
        out[label] = r
    print(f"  ({swapped} Linear layers in FP8; PSNR of each run's video vs the first, same seeds:)")
    print("  " + ", ".join(f"{k} {v['psnr_vs_first_db']:.1f} dB" for k, v in out.items()))
    RESULTS[f"rollout_{preset}"] = {"height": height, "width": width, "runs": out}


@section("profile")
def profile(device: torch.device, preset: str, height: int, width: int, top: int = 15) -> None:
    """Where one streaming block's time goes: GPU kernels by self time, and GPU idle (host-bound)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = load_preset(preset)
    model, vae = _build(cfg, device, DTYPE[device.type])
    rollout = make_rollout(model, vae, height=height, width=width)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state, _ = rollout.start(image, prompt="a torch-lit stone corridor")
    actions = [parse_action("w", mouse_dx=0.4)] * rollout.frames_per_block
    for _ in range(2):
        rollout.step(state, actions)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        t0 = time.perf_counter()
        rollout.step(state, actions)
        _sync(device)
        wall = time.perf_counter() - t0
    averages = list(prof.key_averages())
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    if device.type == "cuda":  # kernels only: aten ops would count their kernels' time a second time
        averages = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
    rows = sorted(averages, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
    busy = sum(getattr(e, attr, 0) for e in averages) / 1e6
    print(f"  one {preset} {height}x{width} block: wall {wall * 1e3:.0f} ms, kernels {busy * 1e3:.0f} ms")
    table = []
    for e in rows:
        ms = getattr(e, attr, 0) / 1e3
        table.append({"name": e.key, "ms": ms, "calls": e.count})
        print(f"  {ms:8.1f} ms {e.count:6d}x  {e.key[:90]}")
    RESULTS["profile"] = {"wall_ms": wall * 1e3, "kernels_ms": busy * 1e3, "top": table}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@section("rollout-a14b")
def rollout_a14b(device: torch.device, preset: str, height: int, width: int, blocks: int) -> None:
    cfg = load_preset(preset)
    dtype = DTYPE[device.type]
    t0 = time.perf_counter()
    model, vae = _build(cfg, device, dtype)
    built = time.perf_counter() - t0
    swapped = _fp8(model, device)
    print(f"  built {preset} on {device} in {built:.0f} s, {swapped} Linear layers in FP8", flush=True)
    runs = {}
    backends = ["sdpa", "sage"] if device.type == "cuda" else ["sdpa"]
    for backend in backends:
        set_attention_backend(model, backend)
        try:
            r = _stream(model, vae, height=height, width=width, blocks=blocks, device=device)
        except Exception as exc:
            traceback.print_exc()
            RESULTS.setdefault("errors", {})[f"rollout {preset} fp8+{backend}"] = (
                f"{type(exc).__name__}: {exc}"
            )
            continue
        r.pop("video")
        _report(f"{preset} {height}x{width} fp8+{backend}", r)
        runs[f"fp8+{backend}"] = r
    compile_blocks(model)
    set_attention_backend(model, "sdpa")
    warm = 2 + cfg.causal.num_sink_blocks + cfg.causal.window_blocks
    try:
        r = _stream(model, vae, height=height, width=width, blocks=blocks, device=device, warmup=warm)
        r.pop("video")
        _report(f"{preset} {height}x{width} fp8+sdpa+compiled", r)
        runs["fp8+sdpa+compiled"] = r
    except Exception as exc:
        traceback.print_exc()
        RESULTS.setdefault("errors", {})[f"rollout {preset} fp8+sdpa+compiled"] = (
            f"{type(exc).__name__}: {exc}"
        )
    RESULTS[f"rollout_{preset}"] = {"height": height, "width": width, "runs": runs}


@section("train")
def train(device: torch.device, preset: str, height: int, width: int, frames: int, steps: int) -> None:
    cfg = load_preset(preset)
    dtype = DTYPE[device.type]
    torch.manual_seed(0)
    with building_on(device, dtype):
        model = WorldModel(cfg).train()
    set_gradient_checkpointing(model, True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    t = 1 + (frames - 1) // cfg.vae.temporal_stride
    h, w = cfg.latent_size(height, width)
    latents = torch.randn(1, cfg.latent_channels, t, h, w, device=device, dtype=dtype)
    timesteps = torch.full((1, t), 500.0, device=device, dtype=dtype)
    timesteps[:, 0] = 0
    cond = i2v_condition(latents[:, :, :1], num_frames=t, temporal_stride=cfg.vae.temporal_stride)
    camera = torch.randn(1, t, 6 * cfg.vae.temporal_stride, height, width, device=device, dtype=dtype)
    text = HashingEncoder(dim=cfg.text_dim).encode(["a knight opens the wooden door"])
    conditioning = Conditioning(text.tokens.to(device, dtype), text.mask.to(device))
    target = torch.randn_like(latents)

    def step() -> None:
        v = model(
            latents, timesteps=timesteps, cond=cond, camera=camera, conditioning=conditioning, causal=False
        )
        loss = (v.float() - target.float()).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(latents, timesteps=timesteps, cond=cond, camera=camera, conditioning=conditioning, causal=False)
    forward_flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup=1, repeats=steps)
    tokens = t * cfg.tokens_per_frame(height, width)
    model_flops = 3 * forward_flops  # forward + backward (2x); the recomputed forward is not counted
    peak = _peak(device)
    row = {
        "preset": preset,
        "video_frames": frames,
        "latent_frames": t,
        "tokens": tokens,
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "model_tflops_per_s": model_flops / seconds / 1e12,
        "mfu": model_flops / seconds / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    RESULTS["train"] = row
    mfu = f", MFU {row['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""
    mem = f", peak {row['peak_mem_gib']:.1f} GiB" if row["peak_mem_gib"] is not None else ""
    print(
        f"  {preset} {frames} frames {height}x{width} ({tokens} tokens), bf16 weights + fused AdamW, "
        f"activation checkpointing: {seconds:.2f} s/step, {row['tokens_per_s']:.0f} tokens/s, "
        f"{row['model_tflops_per_s']:.0f} model TFLOP/s{mfu}{mem}"
    )


def main(argv: list[str] | None = None) -> None:
    from benchmarks import bench_realtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (checks the script; CPU works)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here (a folder: named file)")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    parser.add_argument("--bf16", action="store_true", help="bf16 on CPU too")
    args = parser.parse_args(argv)
    if args.bf16:
        DTYPE["cpu"] = torch.bfloat16
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    if device.type != "cuda" and not quick:
        parser.error(
            "no CUDA device: these are GPU numbers (small/a14b at 480x832). Run it on a CUDA machine, or "
            "add --quick to check the script on this CPU with tiny shapes"
        )
    if quick:  # the numbers are not the point, and a shared CPU's thread contention slows blocks 100x
        torch.set_num_threads(1)
    todo: dict[str, Callable[[], None]] = {
        "gemm": lambda: gemm(device, 256 if quick else 8192),
        "fp8": lambda: fp8(
            device,
            64 if quick else 4680,
            [(64, 128)]
            if quick
            else [(1536, 8960), (8960, 1536), (5120, 5120), (5120, 13824), (13824, 5120)],
        ),
        "attention": lambda: attention(
            device,
            [("tiny", 2, 32, 96, 64)]
            if quick
            else [
                ("small 480p block vs cache", 12, 4680, 20280, 128),
                ("a14b 480p block vs cache", 40, 4680, 20280, 128),
            ],
        ),
        "profile": lambda: profile(
            device, "tiny" if quick else "small", *((64, 64) if quick else (480, 832))
        ),
        "rollout-small": lambda: rollout_small(
            device, "tiny" if quick else "small", *((64, 64) if quick else (480, 832)), 2 if quick else 4
        ),
        "train": lambda: train(
            device,
            "tiny" if quick else "small",
            *((64, 64) if quick else (480, 832)),
            9 if quick else 81,
            1 if quick else 3,
        ),
        "rollout-a14b": lambda: rollout_a14b(
            device, "tiny" if quick else "a14b", *((64, 64) if quick else (480, 832)), 1 if quick else 3
        ),
        **bench_realtime.sections(device, quick=quick),
    }
    unknown = sorted((set(args.only or []) | set(args.skip)) - set(todo))
    if unknown:
        parser.error(f"unknown sections {unknown}; the sections are {sorted(todo)}")
    if args.out:
        OUT.append(results_path(args.out, device))
    env(device)
    for name, run in todo.items():
        if name not in args.skip and (args.only is None or name in args.only):
            run()
            save_results()
    for path in OUT:
        print(f"\nwrote {path}")


if __name__ == "__main__":
    # The importable module's main, not this __main__ copy's: its sections and bench_realtime's then
    # share one RESULTS.
    from benchmarks import bench_gpu

    bench_gpu.main()
