"""How well curation's estimated cameras match ground truth (SynthWorld writes it under ``_truth/``).

Curation never reads the truth; this report does, for tests and benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldloop.components.curation.camera_estimation import rotation_error_deg
from worldloop.components.curation.dataset import CuratedClip


@dataclass(frozen=True)
class CameraErrorReport:
    clips: int
    frames: int
    yaw_median_deg: float
    yaw_p90_deg: float
    geodesic_median_deg: float

    def line(self) -> str:
        return (
            f"estimated camera vs truth over {self.clips} clips / {self.frames} frames: yaw median "
            f"{self.yaw_median_deg:.2f}°, p90 {self.yaw_p90_deg:.2f}°; rotation median "
            f"{self.geodesic_median_deg:.2f}°"
        )


def camera_error_report(clips: list[CuratedClip], truth_dir: str | Path) -> CameraErrorReport:
    """Yaw and rotation error (vs frame 0 of each clip) for estimated cameras with a truth record."""
    yaw: list[np.ndarray] = []
    geo: list[np.ndarray] = []
    used = 0
    for clip in clips:
        path = Path(truth_dir) / f"{clip.source_name}.json"
        if clip.camera.source != "estimated" or not path.exists():
            continue
        truth = np.asarray(json.loads(path.read_text())["c2w"], np.float64)
        a, b = clip.start_frame, clip.start_frame + clip.frames
        if b > len(truth):
            continue
        rel = np.linalg.inv(truth[a]) @ truth[a:b]
        err = rotation_error_deg(np.asarray(clip.camera.c2w), rel)
        yaw.append(err["yaw"][1:])
        geo.append(err["geodesic"][1:])
        used += 1
    if not used:
        raise ValueError(f"no estimated clips with a truth record under {truth_dir}")
    y, g = np.concatenate(yaw), np.concatenate(geo)
    return CameraErrorReport(
        clips=used,
        frames=int(y.size),
        yaw_median_deg=float(np.median(y)),
        yaw_p90_deg=float(np.percentile(y, 90)),
        geodesic_median_deg=float(np.median(g)),
    )
