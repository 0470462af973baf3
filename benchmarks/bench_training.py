"""Training on this CPU (tiny preset, DeepSpeed, world size 1): steps/s of stages 1–2 with the share
of a step spent preparing inputs (VAE + text + rays), then the whole chain 1 → 4 with the stage
presets — seconds per stage and each stage's own loss over its run (issue goal: chain ≤ 10 min)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.loop import build_trainer
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.windows import WindowSampler
from worldloop.model.vae import CausalVideoVAE


def main(steps: int = 8, frames: int = 17, size: int = 64) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "data", SynthConfig(size=size, frames=frames), clips=2, seed=3)
        clips = Mixture.open(str(Path(tmp) / "data"))
        threads = torch.get_num_threads()
        print(f"tiny stages 1–2, {frames} frames at {size}x{size}, batch 1, CPU {threads} threads")
        for stage in ("action", "instruction"):
            cfg = stage_preset(stage).model_copy(
                update={
                    "curriculum": (CurriculumPhase(frames=frames, steps=steps + 1),),
                    "checkpoint_every": 10**6,
                }
            )
            torch.manual_seed(0)
            mcfg = load_preset("tiny")
            model, vae = build_world_model(mcfg), CausalVideoVAE(mcfg.vae)
            enc = HashingEncoder(dim=mcfg.text_dim)
            trainer = build_trainer(
                cfg, model, vae=vae, text_encoder=enc, data=clips, checkpoint_dir=Path(tmp) / stage
            )
            trainer.run(max_steps=1)  # warm-up (DeepSpeed init, allocator)
            start = time.perf_counter()
            trainer.run(max_steps=steps)
            per_step = (time.perf_counter() - start) / steps
            sampler = WindowSampler(clips, frames=frames, height=size, width=size, seed=0)
            start = time.perf_counter()
            for i in range(steps):
                prepare_batch(
                    sampler.batch([i]), vae=vae, text_encoder=enc, with_instruction=stage != "action"
                )
            prep = (time.perf_counter() - start) / steps
            print(
                f"  {stage:<12} {1 / per_step:6.2f} steps/s  {frames / per_step:7.1f} clip frames/s  "
                f"(inputs {prep / per_step:.0%} of a step; includes a checkpoint at the end)"
            )


def chain() -> None:
    import statistics

    from worldloop.components.training.run import StageRun, run_chain
    from worldloop.model.train.config import LONG_CLIP_FRAMES, Stage

    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "data", SynthConfig(size=64, frames=33), clips=4, seed=1)
        write_dataset(Path(tmp) / "long", SynthConfig(size=64, frames=LONG_CLIP_FRAMES), clips=2, seed=1)
        start = last = time.perf_counter()
        print("chain 0 → 4, tiny presets, 4 SynthWorld clips (33 frames, 64 px), stage 4 on 2 clips of 10 s")

        def report(stage: Stage, run: StageRun) -> None:
            nonlocal last
            losses = run.result.losses
            k = max(1, len(losses) // 4)
            now = time.perf_counter()
            first, final = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
            print(
                f"  {stage.value:<12} {run.result.steps:4d} steps {now - last:6.1f} s   "
                f"loss {first:.4f} → {final:.4f} (first/last quarter)"
            )
            last = now

        run_chain(
            data=str(Path(tmp) / "data"),
            long_data=str(Path(tmp) / "long"),
            out=Path(tmp) / "out",
            track=False,
            on_stage=report,
        )
        print(f"  total {time.perf_counter() - start:.1f} s (goal ≤ 600 s)")


if __name__ == "__main__":
    main()
    chain()
