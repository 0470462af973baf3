"""Training throughput of stages 1–2 on this CPU (tiny preset, DeepSpeed, world size 1): steps/s and
clip frames/s per stage, with the share of a step spent preparing inputs (VAE + text + rays)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.model import build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.data import WindowSampler, load_synthworld
from worldloop.model.train.objectives import prepare_batch
from worldloop.model.train.trainer import FlowMatchingTrainer
from worldloop.model.vae import CausalVideoVAE


def main(steps: int = 8, frames: int = 17, size: int = 64) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "data", SynthConfig(size=size, frames=frames), clips=2, seed=3)
        clips = load_synthworld(Path(tmp) / "data")
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
            trainer = FlowMatchingTrainer(
                cfg, model, vae=vae, text_encoder=enc, clips=clips, checkpoint_dir=Path(tmp) / stage
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


if __name__ == "__main__":
    main()
