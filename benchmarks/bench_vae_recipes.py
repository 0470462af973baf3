"""VAE training recipes on this CPU: held-out reconstruction PSNR/SSIM after a fixed CPU budget.

``python -m benchmarks.bench_vae_recipes [--minutes M] [--only a,b] [--threads N]`` trains each option
from the same seed on SynthWorld clips (64×64, seed 0) for ``M`` minutes of *process* CPU time — the
machine is shared, so wall time would measure the neighbours — and evaluates whole-clip encode →
decode (posterior mean) on 17-frame clips of worlds from another seed with the platform's own
PSNR/SSIM (``components/evaluation/metrics``). The step count of each option is set from a short
timing calibration and recorded, so ``--steps`` reruns the same optimisation exactly.

Prints a table and merges the results into ``benchmarks/results/vae_recipes.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldloop.components.evaluation.metrics import psnr, ssim
from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model.train.windows import WindowSampler
from worldloop.model.vae import (
    CausalVideoVAE,
    VAEConfig,
    VAETrainConfig,
    tiny_vae,
    tiny_vae_recipe,
    vae_loss,
)
from worldloop.model.vae.latent_stats import fit_latent_stats
from worldloop.model.vae.linear_code import fit_linear_code
from worldloop.model.vae.shortcut import block_means, block_repeat

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results" / "vae_recipes.json"
SIZE, TRAIN_SEED, HELDOUT_SEED = 64, 0, 1
NUM_TRAIN_CLIPS, TRAIN_FRAMES = 48, 33
NUM_HELDOUT_CLIPS, HELDOUT_FRAMES = 8, 17
PCA_SIZES = (16, 32, 64, 128, 256)  # numbers per 8×8 block and latent frame of the linear reference codes
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)  # fractions of the steps at which held-out PSNR is measured


def _arch(**kw: object) -> VAEConfig:
    base: dict[str, object] = dict(
        num_res_blocks=1, temporal_downsample=(True, True), patch_size=2, init_logvar=-6.0
    )
    return VAEConfig.model_validate(base | kw)


# Architectures (16 latent channels unless named, time ×4, space ×8, posterior initialised narrow).
WAN21_TINY = _arch(  # the pre-recipe tiny_vae(): Wan2.1 layout, full-resolution first stage
    base_channels=16, channel_multipliers=(1, 2, 2, 2), temporal_downsample=(False, True, True), patch_size=1
)
P2_B16 = _arch(base_channels=16, channel_multipliers=(1, 2, 4))  # patch 2, lean: 16/32/64 channels
P2_B16_SC = P2_B16.model_copy(update={"latent_shortcut": True})
P2_B16_SC_Z32 = P2_B16_SC.model_copy(update={"latent_channels": 32})  # 24× compression
P2_B16_SC_Z64 = P2_B16_SC.model_copy(update={"latent_channels": 64})  # 12×; shortcut at 2-pixel cells
P2_B16_CODE = P2_B16.model_copy(update={"linear_code": True})  # model/vae/linear_code.py
P2_B16_CODE_Z64 = P2_B16_CODE.model_copy(update={"latent_channels": 64})
P2_B32 = _arch(base_channels=32, channel_multipliers=(1, 2, 2))  # patch 2, wider: 32/64/64 channels

# The reference training recipe each option changes one thing of (num_steps is set by the budget).
REF = VAETrainConfig(lr=5e-4, warmup_steps=20, num_steps=10**6, batch_size=2, num_frames=9, kl_weight=1e-6)


@dataclass(frozen=True)
class Option:
    """One row of the table: an architecture, a recipe, and the share of budget for the image phase."""

    name: str
    what: str
    vae: VAEConfig
    train: VAETrainConfig
    image_fraction: float = 0.0


def options() -> list[Option]:
    """Every option measured, one change at a time from the reference (patch 2, 16·(1, 2, 4), L1)."""
    t, ref = REF, P2_B16
    return [
        Option("wan21_l1", "old tiny_vae: p1, 16·(1,2,2,2)", WAN21_TINY, t),
        Option("p2b16_l1", "patch 2, lean 16·(1,2,4) [reference]", ref, t),
        Option("p2b32_l1", "patch 2, 32·(1,2,2)", P2_B32, t),
        Option("p2b16_ssim", "+ 0.2·(1 − SSIM)", ref, t.model_copy(update={"ssim_weight": 0.2})),
        Option(
            "p2b16_f5", "5-frame clips, batch 4", ref, t.model_copy(update={"num_frames": 5, "batch_size": 4})
        ),
        Option(
            "p2b16_f17",
            "17-frame clips, batch 1",
            ref,
            t.model_copy(update={"num_frames": 17, "batch_size": 1}),
        ),
        Option("p2b16_img", "first 30% of budget on single frames", ref, t, image_fraction=0.3),
        Option("p2b16_lr1e3", "lr 1e-3", ref, t.model_copy(update={"lr": 1e-3})),
        Option("p2b16_lr2e3", "lr 2e-3", ref, t.model_copy(update={"lr": 2e-3})),
        Option(
            "p2b16_const", "constant lr after warm-up", ref, t.model_copy(update={"schedule": "constant"})
        ),
        Option("p2b16_sc", "+ latent shortcut (block means in/out)", P2_B16_SC, t),
        Option("p2b16_sc_lr1e3", "+ latent shortcut, lr 1e-3", P2_B16_SC, t.model_copy(update={"lr": 1e-3})),
        Option(
            "p2b16_sc_ssim",
            "+ latent shortcut, + 0.2·(1 − SSIM)",
            P2_B16_SC,
            t.model_copy(update={"ssim_weight": 0.2}),
        ),
        Option("p2b16_sc_z32", "+ latent shortcut, 32 latent channels", P2_B16_SC_Z32, t),
        Option("p2b16_sc_z64", "+ latent shortcut, 64 latent channels", P2_B16_SC_Z64, t),
        Option("p2b16_code", "+ linear block code (PCA-fitted)", P2_B16_CODE, t),
        Option("p2b16_code_z64", "+ linear block code, 64 latent channels", P2_B16_CODE_Z64, t),
        Option(
            "p2b16_code_mse",
            "+ linear block code, MSE instead of L1",
            P2_B16_CODE,
            t.model_copy(update={"pixel_loss": "mse"}),
        ),
        # The defaults chosen from the rows above (run it alone with a longer --minutes).
        Option("recipe", "tiny_vae() + tiny_vae_recipe()", tiny_vae(), tiny_vae_recipe()),
    ]


@dataclass
class Data:
    train: Mixture
    heldout: list[np.ndarray] = field(default_factory=list)  # (F, H, W, 3) uint8 each


def make_data(root: Path, *, clips: int = NUM_TRAIN_CLIPS, frames: int = TRAIN_FRAMES) -> Data:
    """Training worlds (seed 0: ``clips`` clips of ``frames`` frames) and held-out worlds (seed 1),
    rendered and H.264-coded like the platform's."""
    write_dataset(root / "train", SynthConfig(size=SIZE, frames=frames), clips=clips, seed=TRAIN_SEED)
    write_dataset(
        root / "heldout",
        SynthConfig(size=SIZE, frames=HELDOUT_FRAMES),
        clips=NUM_HELDOUT_CLIPS,
        seed=HELDOUT_SEED,
    )
    heldout = Mixture.open(str(root / "heldout"))
    clips = heldout.stores[0].clips()
    return Data(Mixture.open(str(root / "train")), [heldout.stores[0].load(*ref).frames for ref in clips])


def _to_video(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) float in [-1, 1]."""
    return (
        torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
    )


@torch.no_grad()
def evaluate(vae: CausalVideoVAE, heldout: list[np.ndarray]) -> tuple[float, float]:
    """Held-out (PSNR dB pooled over clips, mean SSIM): whole-clip encode (mean) → decode, clamped."""
    vae.eval()
    psnrs, ssims = [], []
    for frames in heldout:
        out = vae.decode(vae.encode(_to_video(frames)))[0].clamp(-1, 1)  # (3, F, H, W)
        rec = out.add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
        psnrs.append(psnr(rec, frames))
        ssims.append(ssim(rec, frames))
    vae.train()
    mse = float(np.mean([10 ** (-p / 10) for p in psnrs]))
    return -10 * float(np.log10(mse)), float(np.mean(ssims))


class Run:
    """Model, optimiser and samplers of one option, stepped one optimiser step at a time."""

    def __init__(self, option: Option, train: VAETrainConfig, data: Data, *, seed: int) -> None:
        torch.manual_seed(seed)
        self.cfg = train
        self.vae = CausalVideoVAE(option.vae).train()
        self.opt = torch.optim.AdamW(
            self.vae.parameters(), lr=train.lr, betas=train.betas, weight_decay=train.weight_decay
        )
        self.noise = torch.Generator().manual_seed(seed)
        self.clips = WindowSampler(data.train, frames=train.num_frames, height=SIZE, width=SIZE, seed=seed)
        self.images = WindowSampler(data.train, frames=1, height=SIZE, width=SIZE, seed=seed + 1)
        if option.vae.linear_code:  # as the VAE stage does: the code starts as the training windows' PCA
            windows = WindowSampler(
                data.train, frames=train.num_frames, height=SIZE, width=SIZE, seed=seed + 2
            )
            videos = torch.stack([w.video for w in windows.batch(range(64))])
            assert self.vae.encoder.code is not None and self.vae.decoder.code is not None
            fit_linear_code(self.vae.encoder.code, self.vae.decoder.code, [videos])
        self.step_index = 0
        self.frames_seen = 0

    def step(self) -> dict[str, float]:
        i, cfg = self.step_index, self.cfg
        sampler = self.images if i < cfg.image_steps else self.clips
        b = cfg.batch_at(i)
        video = torch.stack([w.video for w in sampler.batch(range(i * b, (i + 1) * b))])  # (B, 3, F, H, W)
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr_at(i)
        loss, parts = vae_loss(
            self.vae,
            video,
            kl_weight=cfg.kl_weight,
            ssim_weight=cfg.ssim_weight,
            pixel=cfg.pixel_loss,
            generator=self.noise,
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step_index += 1
        self.frames_seen += video.shape[0] * video.shape[2]
        return parts


def _seconds_per_step(option: Option, data: Data, *, image: bool, seed: int) -> float:
    """Median CPU seconds of 3 steps after 1 warm-up, on a throwaway model."""
    train = option.train.model_copy(update={"image_steps": 10**5 if image else 0, "num_steps": 10**5 + 1})
    run = Run(option, train, data, seed=seed)
    times = []
    for _ in range(4):
        start = time.process_time()
        run.step()
        times.append(time.process_time() - start)
    return statistics.median(times[1:])


def plan(option: Option, data: Data, *, seconds: float, seed: int) -> VAETrainConfig:
    """The option's recipe with ``num_steps``/``image_steps`` sized to ``seconds`` of CPU time."""
    clip_s = _seconds_per_step(option, data, image=False, seed=seed)
    image_steps = 0
    if option.image_fraction > 0:
        image_steps = int(
            option.image_fraction * seconds / _seconds_per_step(option, data, image=True, seed=seed)
        )
    clip_steps = max(1, int((1 - option.image_fraction) * seconds / clip_s))
    return option.train.model_copy(update={"num_steps": image_steps + clip_steps, "image_steps": image_steps})


def run_option(
    option: Option, data: Data, *, seconds: float, seed: int, steps: int | None
) -> dict[str, object]:
    """Train one option (CPU budget ``seconds``, or exactly ``steps``) and measure it along the way."""
    train = plan(option, data, seconds=seconds, seed=seed)
    if steps is not None:
        image = int(steps * option.image_fraction)
        train = train.model_copy(update={"num_steps": steps, "image_steps": image})
    run = Run(option, train, data, seed=seed)
    marks = {max(1, int(round(f * train.num_steps))) for f in CHECKPOINTS}
    curve: list[dict[str, float]] = []
    cpu = wall = 0.0
    for _ in range(train.num_steps):
        c0, w0 = time.process_time(), time.perf_counter()
        parts = run.step()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        if run.step_index in marks:
            p, s = evaluate(run.vae, data.heldout)
            curve.append(dict(step=run.step_index, cpu_s=round(cpu, 1), psnr=round(p, 2), ssim=round(s, 4)))
            log.info(
                "%s step %d cpu %.0fs train %.2f dB held-out %.2f dB",
                option.name,
                run.step_index,
                cpu,
                parts["psnr"],
                p,
            )
    mean, std = fit_latent_stats(run.vae, [torch.cat([_to_video(f) for f in data.heldout[:4]])])
    return dict(
        name=option.name,
        what=option.what,
        params=sum(p.numel() for p in run.vae.parameters()),
        vae=option.vae.model_dump(mode="json"),
        train=train.model_dump(mode="json"),
        seed=seed,
        threads=torch.get_num_threads(),
        steps=train.num_steps,
        frames_seen=run.frames_seen,
        cpu_s=round(cpu, 1),
        wall_s=round(wall, 1),
        frames_per_cpu_s=round(run.frames_seen / cpu, 2),
        psnr=curve[-1]["psnr"],
        ssim=curve[-1]["ssim"],
        curve=curve,
        latent_std_range=[round(float(std.min()), 3), round(float(std.max()), 3)],
        latent_mean_abs_max=round(float(mean.abs().max()), 3),
    )


def _blocks(clip: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of (F, H, W, 3) uint8 -> (H/8·W/8, (stop-start)·8·8·3) float rows in [0, 1]."""
    x = clip[start:stop].astype(np.float64) / 255.0
    t, h, w, c = x.shape
    return x.reshape(t, h // 8, 8, w // 8, 8, c).transpose(1, 3, 0, 2, 4, 5).reshape((h // 8) * (w // 8), -1)


def _groups(num_frames: int) -> list[tuple[int, int]]:
    """Frame ranges of the latent frames: the first frame alone, then groups of 4."""
    return [(0, 1)] + [(s, s + 4) for s in range(1, num_frames - 3, 4)]


def reference_points(data: Data) -> dict[str, float]:
    """Held-out PSNR of codecs with no training budget, to read the table against: the training set's
    mean image; the latent shortcut alone (colour means of 4×4 cells over each latent frame's
    frames); and linear codes (PCA, 16, 32 or 64 numbers per 8×8 block and latent frame: the sizes of
    16-, 32- and 64-channel latents)."""
    store = data.train.stores[0]
    train = [store.load(*ref).frames for ref in store.clips()]
    mean_image = np.mean([f.astype(np.float64) for c in train for f in c], axis=0)
    out: dict[str, list[float]] = {"dataset_mean_image": [], "shortcut_alone": [], "half_resolution": []}
    out |= {f"pca{k}_per_block": [] for k in PCA_SIZES}
    bases = {}
    for length in (1, 4):  # PCA basis per latent-frame kind, fitted on training clips
        rows = np.concatenate([_blocks(c, s, s + length) for c in train for s in range(1, c.shape[0] - 4, 4)])
        mean = rows.mean(axis=0)
        bases[length] = (mean, np.linalg.svd(rows - mean, full_matrices=False)[2])
    for clip in data.heldout:
        video = _to_video(clip)
        means = block_means(video, temporal=4, spatial=8, cells=2)
        thumb = block_repeat(means, temporal=4, spatial=8, cells=2, first=True)[0].clamp(-1, 1)
        ref = clip.astype(np.float64) / 255.0
        se = {"dataset_mean_image": ((mean_image / 255.0 - ref) ** 2).mean()}
        rec = (thumb.permute(1, 2, 3, 0).double().numpy() + 1) / 2  # (F, H, W, 3) in [0, 1]
        se["shortcut_alone"] = ((rec - ref) ** 2).mean()
        frames = torch.from_numpy(ref).permute(0, 3, 1, 2)  # (F, 3, H, W) in [0, 1]
        half = torch.nn.functional.avg_pool2d(frames, 2)
        up = torch.nn.functional.interpolate(half, scale_factor=2, mode="bilinear", align_corners=False)
        se["half_resolution"] = float(((up - frames) ** 2).mean())
        for k in PCA_SIZES:
            err = []
            for a, b in _groups(clip.shape[0]):
                x = _blocks(clip, a, b)
                mean, vt = bases[b - a]
                basis = vt[:k]
                err.append(((np.clip((x - mean) @ basis.T @ basis + mean, 0, 1) - x) ** 2).mean() * x.size)
            se[f"pca{k}_per_block"] = sum(err) / ref.size
        for k, v in se.items():
            out[k].append(float(v))
    return {k: round(-10 * float(np.log10(np.mean(v))), 2) for k, v in out.items()}


def _merge(results: list[dict[str, object]], path: Path, references: dict[str, float]) -> None:
    """Merge ``results`` into ``path`` by option name, under a lock (parallel invocations share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "worldloop_vae_recipes.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {"options": {}}
        old["references_psnr_db"] = references
        for r in results:
            old["options"][str(r["name"])] = r
        path.write_text(json.dumps(old, indent=1) + "\n")


def print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'option':<14} {'what':<38} {'params':>7} {'steps':>5} {'cpu s':>6} {'fr/s':>6} "
        f"{'PSNR@25/50/75/100% (dB)':>26} {'SSIM':>6}"
    )
    for r in rows:
        curve = r["curve"]
        assert isinstance(curve, list)
        ps = "/".join(f"{c['psnr']:.1f}" for c in curve)
        print(
            f"{r['name']!s:<14} {r['what']!s:<38} {int(r['params']) / 1e6:6.2f}M {r['steps']!s:>5} "  # type: ignore[call-overload]
            f"{r['cpu_s']!s:>6} {r['frames_per_cpu_s']!s:>6} {ps:>26} {r['ssim']!s:>6}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.0, help="CPU minutes of training per option")
    parser.add_argument("--only", default="", help="comma-separated option names (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="exact steps instead of the CPU budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--train-clips", type=int, default=NUM_TRAIN_CLIPS, help="training worlds")
    parser.add_argument("--train-frames", type=int, default=TRAIN_FRAMES, help="frames per training clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    chosen = [o for o in options() if not args.only or o.name in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), clips=args.train_clips, frames=args.train_frames)
        references = reference_points(data)
        print("held-out PSNR with no training:", ", ".join(f"{k} {v} dB" for k, v in references.items()))
        for option in chosen:
            rows.append(run_option(option, data, seconds=args.minutes * 60, seed=args.seed, steps=args.steps))
            _merge(rows[-1:], args.out, references)
    print_table(rows)


if __name__ == "__main__":
    main()
