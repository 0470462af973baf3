"""How a distillation stage (3–4) of a big preset fits on one node: bytes per GPU for the student, the
critic (fake score) and the frozen teacher (real score) under DeepSpeed ZeRO-3, with activation
checkpointing and, optionally, the optimiser state offloaded to host memory.

The parameter counts come from the model itself (built on the meta device: no memory); the rest is
arithmetic, stated here so the README's table can be checked against it
(``python -m worldloop.model.train.memory_plan`` prints that table):

* a **trained** parameter (student and critic: the experts and the interaction extractor, as stages 3–4
  train them) holds bf16 weights (2 B) and bf16 gradients (2 B) on the GPU and the fp32 master copy with
  AdamW's two moments (12 B) on the GPU or, offloaded, in host memory; ZeRO-3 partitions all of it over
  the node's GPUs;
* a **frozen** parameter (the teacher; the student's and critic's camera encoders) holds bf16 weights
  only, partitioned the same way (ZeRO-3 inference);
* the **working set**: ZeRO-3 gathers whole layers before using them; DeepSpeed keeps at most
  ``stage3_max_live_parameters`` (default 1e9) gathered bf16 values per GPU, plus the prefetch bucket
  (``stage3_prefetch_bucket_size``, 5e7);
* **activations**, with activation checkpointing and the window's tokens split over the node's GPUs
  (Ulysses sequence parallel): one saved hidden state per layer of the model whose graph is kept (one at
  a time: the student's in a generator step, the critic's in a critic step; the scores are evaluated
  without a graph), plus one layer recomputed in the backward (q, k, v, attention output: 4 × dim; the
  feed-forward's hidden: 2 × ffn_dim).

Not counted: the VAE and text encoder (frozen, < 1 % of a14b, run once per batch), the CUDA context and
allocator fragmentation (budget ~5 GB) — the table's "free" column is what is left for them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from worldloop.model.config import ModelConfig, load_preset

GB = 1e9
TRAINED_GPU_BYTES = 2 + 2  # bf16 weights + bf16 gradients
OPTIMISER_BYTES = 4 + 4 + 4  # fp32 master weights + AdamW m and v
FROZEN_BYTES = 2  # bf16 weights
MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed stage3_max_live_parameters (default)
PREFETCH_BUCKET = 5e7  # DeepSpeed stage3_prefetch_bucket_size (default)


@dataclass(frozen=True)
class ModelCounts:
    """Parameters of one world model, from the model built on the meta device."""

    total: int
    trained: int  # what stages 3–4 train: the experts and the interaction extractor (+ text projection)
    per_expert: int


def count_parameters(cfg: ModelConfig) -> ModelCounts:
    """Build ``cfg`` on the meta device (shapes only) and count what a distillation stage trains."""
    from worldloop.model import build_world_model  # torch; imported here so the table prints fast

    model = build_world_model(cfg, device="meta")
    groups = model.parameter_groups()
    count = {name: sum(p.numel() for p in params) for name, params in groups.items()}
    experts = [count[f"expert{i}"] for i in range(cfg.num_experts)]
    total = sum(p.numel() for p in model.parameters())
    return ModelCounts(total=total, trained=sum(experts) + count["interaction"], per_expert=max(experts))


def window_tokens(cfg: ModelConfig, *, height: int, width: int, frames: int) -> int:
    """DiT tokens of one window of ``frames`` video frames at ``height`` × ``width``."""
    latent_frames = 1 + (frames - 1) // cfg.vae.temporal_stride
    return latent_frames * cfg.tokens_per_frame(height, width)


@dataclass(frozen=True)
class MemoryPlan:
    gpus: int
    gpu_bytes: float
    offload: bool
    student: float  # bytes per GPU
    critic: float
    teacher: float
    working_set: float
    activations: float
    host: float  # bytes of host memory per node (offloaded optimiser state)

    @property
    def total(self) -> float:
        return self.student + self.critic + self.teacher + self.working_set + self.activations

    @property
    def free(self) -> float:
        return self.gpu_bytes - self.total


def plan(
    cfg: ModelConfig,
    counts: ModelCounts,
    *,
    gpus: int,
    gpu_bytes: float,
    offload: bool,
    height: int = 480,
    width: int = 832,
    frames: int = 81,
) -> MemoryPlan:
    """Bytes per GPU of a distillation step on one node of ``gpus`` GPUs (see the module docstring)."""
    frozen_part = counts.total - counts.trained
    on_gpu = TRAINED_GPU_BYTES + (0 if offload else OPTIMISER_BYTES)
    trained_model = (counts.trained * on_gpu + frozen_part * FROZEN_BYTES) / gpus  # student or critic
    teacher = counts.total * FROZEN_BYTES / gpus
    working = (MAX_LIVE_PARAMETERS + PREFETCH_BUCKET) * FROZEN_BYTES
    tokens = window_tokens(cfg, height=height, width=width, frames=frames) / gpus
    saved = cfg.num_layers * tokens * cfg.dim * 2
    recomputed = tokens * (4 * cfg.dim + 2 * cfg.ffn_dim) * 2
    host = 2 * counts.trained * OPTIMISER_BYTES if offload else 0.0
    return MemoryPlan(
        gpus=gpus,
        gpu_bytes=gpu_bytes,
        offload=offload,
        student=trained_model,
        critic=trained_model,
        teacher=teacher,
        working_set=working,
        activations=saved + recomputed,
        host=host,
    )


GPUS = (("8 × 80 GB (H100)", 8, 80 * GB), ("8 × 141 GB (H200)", 8, 141 * GB))


def table(preset: str = "a14b") -> str:
    """The README's memory-plan table for ``preset`` (GB = 10⁹ bytes, per GPU unless said)."""
    cfg = load_preset(preset)
    counts = count_parameters(cfg)
    rows = [
        "| node | optimiser state | student | critic | teacher | working set | activations | total "
        "| free | host memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, gpus, size in GPUS:
        for offload in (False, True):
            p = plan(cfg, counts, gpus=gpus, gpu_bytes=size, offload=offload)
            cells = [p.student, p.critic, p.teacher, p.working_set, p.activations, p.total, p.free]
            rows.append(
                f"| {name} | {'offloaded to host' if offload else 'on the GPUs'} | "
                + " | ".join(f"{c / GB:.1f}" for c in cells)
                + f" | {p.host / GB:.0f} GB per node |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="a14b")
    args = parser.parse_args()
    counts = count_parameters(load_preset(args.preset))
    print(
        f"{args.preset}: {counts.total / GB:.2f} B parameters per model "
        f"({counts.per_expert / GB:.2f} B per expert), {counts.trained / GB:.2f} B trained in stages 3–4"
    )
    print(table(args.preset))


if __name__ == "__main__":
    main()
