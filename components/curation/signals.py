"""Per-frame-pair measurements every curation step reads: motion, unexplained change, brightness.

Frames are analysed at a small working size (``work_size`` px, grey). For each consecutive pair we
estimate dense optical flow (Farneback) from frame ``i + 1`` back to frame ``i``, warp frame ``i``
onto ``i + 1`` and look at what the motion does not explain:

* ``residual`` — median |warped − next| of contrast-normalised intensity. Camera motion is explained
  by the flow; a hard cut is not (new content everywhere), so the median jumps.
* ``edge_residual`` — the same on gradient magnitude, which ignores smooth lighting changes (a
  muzzle flash, night falling) that move intensity but not edges.
* ``flow`` — mean flow magnitude in pixels of the original frame: static clips sit near zero.
* ``residual_maps`` — the per-pixel residual at working size, for locating local state changes.

Contrast normalisation divides by ``std + CONTRAST_FLOOR`` grey levels, so the compression noise of
a nearly black frame is not amplified into a fake cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worldloop.video import check_frames

CONTRAST_FLOOR = 8.0  # grey levels added to the per-frame std before normalising


@dataclass(frozen=True)
class PairSignals:
    """Measurements of one clip: per-frame arrays are (F,), per-pair arrays are (F - 1,)."""

    luma: np.ndarray  # (F,) mean luma in [0, 1]
    sharpness: np.ndarray  # (F,) variance of the Laplacian of the working-size grey frame
    flow: np.ndarray  # (F-1,) mean optical-flow magnitude, original-resolution pixels per frame
    residual: np.ndarray  # (F-1,) median motion-compensated residual, normalised intensity
    edge_residual: np.ndarray  # (F-1,) median motion-compensated residual, normalised gradients
    residual_maps: np.ndarray  # (F-1, S, S) float32 per-pixel residual (normalised intensity)
    work_size: int
    scale: float  # original pixels per working pixel (along width)

    @property
    def num_frames(self) -> int:
        return int(self.luma.shape[0])


def _normalise(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return (x - mean) / (std + CONTRAST_FLOOR)


def _gradient(grey: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(grey, (3, 3), 0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
    return np.hypot(gx, gy)


def analyse(frames: np.ndarray, *, work_size: int = 64) -> PairSignals:
    """Measure ``frames`` (F, H, W, 3) uint8 RGB, F ≥ 1."""
    check_frames(frames)
    size = (work_size, work_size)
    grey_full = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    luma = np.array([g.mean() / 255.0 for g in grey_full], np.float64)
    grey = np.stack([cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in grey_full])
    grey_f = grey.astype(np.float32)
    sharpness = np.array([cv2.Laplacian(g, cv2.CV_32F).var() for g in grey_f], np.float64)
    z = _normalise(grey_f)
    edges = _normalise(np.stack([_gradient(g) for g in grey_f]))

    n = len(frames) - 1
    flow = np.zeros(n)
    residual = np.zeros(n)
    edge_residual = np.zeros(n)
    maps = np.zeros((n, work_size, work_size), np.float32)
    ys, xs = np.mgrid[0:work_size, 0:work_size].astype(np.float32)
    for i in range(n):
        # Backward flow: where each pixel of frame i+1 came from in frame i.
        f = cv2.calcOpticalFlowFarneback(grey[i + 1], grey[i], None, 0.5, 3, 9, 3, 5, 1.1, 0)  # type: ignore[call-overload]
        map_x, map_y = xs + f[..., 0], ys + f[..., 1]
        warp = cv2.remap(z[i], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        warp_edges = cv2.remap(edges[i], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        maps[i] = np.abs(warp - z[i + 1])
        residual[i] = float(np.median(maps[i]))
        edge_residual[i] = float(np.median(np.abs(warp_edges - edges[i + 1])))
        flow[i] = float(np.linalg.norm(f, axis=-1).mean())
    scale = frames.shape[2] / work_size
    return PairSignals(
        luma=luma,
        sharpness=sharpness,
        flow=flow * scale,
        residual=residual,
        edge_residual=edge_residual,
        residual_maps=maps,
        work_size=work_size,
        scale=scale,
    )


def relative_to_neighbours(values: np.ndarray, *, radius: int, floor: float) -> np.ndarray:
    """``values[i]`` over the median of its ±``radius`` neighbours (itself excluded), floored.

    The floor keeps a still stretch (neighbours ≈ 0) from turning noise into a huge ratio.
    """
    out = np.zeros(len(values))
    for i in range(len(values)):
        nb = np.concatenate([values[max(0, i - radius) : i], values[i + 1 : i + radius + 1]])
        base = float(np.median(nb)) if len(nb) else 0.0
        out[i] = values[i] / max(base, floor)
    return out
