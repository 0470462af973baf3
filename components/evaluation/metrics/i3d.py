"""Inception-I3D (Carreira & Zisserman 2017), the Kinetics-400 network behind published FVD numbers.

The architecture and parameter names follow the widely used PyTorch port of DeepMind's I3D
(``piergiaj/pytorch-i3d``, ``InceptionI3d``): TF "SAME" padding computed at run time, batch norm with
eps = 1e-3, and a 1×1×1 ``logits`` convolution with bias. A checkpoint of that port converted to
safetensors (``safetensors.torch.save_file(torch.load("rgb_imagenet.pt"), "i3d_k400.safetensors")``)
loads as is. Weights come only from a local safetensors file: nothing is ever downloaded.

Input: (B, 3, T, 224, 224) RGB in [-1, 1], T ≥ 9 (FVD uses 16). Outputs:

* ``logits`` — (B, 400) pre-softmax Kinetics-400 class scores, averaged over the remaining time
  steps: the embedding of the reference FVD implementation (TF-Hub ``i3d-kinetics-400``) and the
  default here;
* ``pool`` — (B, 1024) the average-pooled ``Mixed_5c`` features before dropout and logits, which some
  later FVD variants use. Distances over the two are not comparable with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from worldloop.components.evaluation.metrics.video_input import check_video, to_float

NUM_CLASSES = 400
INPUT_SIZE = 224
POOL_DIM = 1024
# Branch widths [b0, b1a, b1b, b2a, b2b, b3b] of each Inception block (I3D paper, Fig. 3).
INCEPTION_BLOCKS: tuple[tuple[str, int, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
Triple = tuple[int, int, int]


def _same_pad(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """TF "SAME" padding of a (B, C, T, H, W) input: extra padding goes after, as in TensorFlow."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        # Zero padding, as the PyTorch port: inputs are post-ReLU (≥ 0), so it equals TF's −inf padding.
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) → BatchNorm3d → ReLU; the logits unit has a bias and neither of the rest."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        head: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.head = kernel, stride, head
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, padding=0, bias=head)
        if not head:
            self.bn = nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.head else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(c_in, widths[0])
        self.b1a = Unit3D(c_in, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(c_in, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(c_in, widths[5])

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """The RGB Inception-I3D up to ``Mixed_5c`` plus the Kinetics-400 logits (eval mode only)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, c_in, widths in INCEPTION_BLOCKS:
            self.add_module(name, InceptionModule(c_in, widths))
        self.logits = Unit3D(POOL_DIM, num_classes, head=True)
        # Forward order: stem, then each block, with the pools placed before Mixed_4b and Mixed_5b.
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        self.order += ["MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3"]
        self.order += ["Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2"]
        self.order += ["Mixed_5b", "Mixed_5c"]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, T, 224, 224) in [-1, 1] → logits (B, 400) and pooled features (B, 1024)."""
        for name in self.order:
            x = self.get_submodule(name)(x)
        # (B, 1024, T/8, 7, 7) → VALID 2×7×7 average pool, as the reference: (B, 1024, T/8 − 1, 1, 1)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        logits = self.logits(x).flatten(2).mean(dim=2)  # dropout is the identity at eval
        return logits, x.flatten(2).mean(dim=2)


def _state_key_check(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped key (num_batches_tracked is
    optional: older checkpoints lack it)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    shapes = sorted(
        f"{k}: {tuple(given[k])} (expected {tuple(expected[k])})"
        for k in expected.keys() & given.keys()
        if given[k] != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"wrong shapes {shapes}")
    if problems:
        raise ValueError(
            f"{path} is not an Inception-I3D (pytorch-i3d layout, {NUM_CLASSES} classes) checkpoint: "
            + "; ".join(problems)
        )


def load_i3d(path: str | Path) -> InceptionI3d:
    """An :class:`InceptionI3d` in eval mode with weights from the local safetensors file ``path``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"I3D weights load only from safetensors; convert {path.name} first (see module doc)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"I3D checkpoint {path} does not exist (weights are never downloaded)")
    state = load_file(str(path))
    model = InceptionI3d()
    _state_key_check(model, state, path)
    model.load_state_dict(state, strict=False)  # keys were checked above; only num_batches_tracked may lack
    return model.eval()


def preprocess(video: np.ndarray, num_frames: int) -> Tensor:
    """(T, H, W, 3) uint8 → (3, num_frames, 224, 224) in [-1, 1]: the first ``num_frames`` frames,
    resized bilinearly without antialiasing (as ``tf.image.resize_bilinear`` in the reference FVD)."""
    check_video(video, min_frames=num_frames)
    x = to_float(video[:num_frames])  # (T, 3, H, W)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x * 2.0 - 1.0).permute(1, 0, 2, 3)


class I3DFeatures:
    """FVD features from the Kinetics-400 Inception-I3D loaded from a local safetensors checkpoint.

    ``output="logits"`` (default, D = 400) is the reference FVD embedding; ``"pool"`` (D = 1024) the
    pooled Mixed_5c features. Each clip contributes its first ``num_frames`` frames (16, as FVD-16).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        output: Literal["logits", "pool"] = "logits",
        num_frames: int = 16,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
    ) -> None:
        if output not in ("logits", "pool"):
            raise ValueError(f"output must be 'logits' or 'pool', got {output!r}")
        if num_frames < 9:
            raise ValueError(f"I3D needs at least 9 frames (FVD uses 16), got num_frames={num_frames}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.output, self.num_frames, self.batch_size = output, num_frames, batch_size
        self.device = torch.device(device)
        self.model = load_i3d(checkpoint).to(self.device)

    @property
    def name(self) -> str:
        return f"i3d-k400-{self.output}-{self.num_frames}f"

    @property
    def feature_dim(self) -> int:
        return NUM_CLASSES if self.output == "logits" else POOL_DIM

    @torch.no_grad()
    def extract(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float64 features of N clips, each (T ≥ num_frames, H, W, 3) uint8 RGB."""
        if len(videos) == 0:
            raise ValueError("videos is empty")
        out = []
        for lo in range(0, len(videos), self.batch_size):
            batch = torch.stack([preprocess(v, self.num_frames) for v in videos[lo : lo + self.batch_size]])
            logits, pooled = self.model(batch.to(self.device))
            out.append((logits if self.output == "logits" else pooled).double().cpu())
        return torch.cat(out).numpy()
