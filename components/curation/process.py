"""One source pair through the whole chain: decode → shots → filters → camera → interaction → captions.

:func:`process_pair` never raises for bad data: an unreadable file, a failed filter or an unexpected
error inside one pair becomes a :class:`QuarantineEntry` with its reason, and the run goes on.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np

from worldloop import storage
from worldloop.components.curation.camera_estimation import estimate_camera
from worldloop.components.curation.captioning import Captioner, CaptionRequest, pick_keyframes
from worldloop.components.curation.config import CurationConfig
from worldloop.components.curation.dataset import CuratedClip, QuarantineEntry
from worldloop.components.curation.interactions import mine_interaction
from worldloop.components.curation.quality import Reason, check_quality, shot_stats
from worldloop.components.curation.shots import chunk_ranges, detect_cuts, shot_ranges
from worldloop.components.curation.signals import PairSignals, analyse
from worldloop.components.curation.sources import SourcePair, decode_caption, read_metadata_camera
from worldloop.data import CameraTrack
from worldloop.settings import Settings
from worldloop.storage import Scheme, as_local_path, scheme_of
from worldloop.video import decode_video, encode_mp4

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    clips: list[CuratedClip] = field(default_factory=list)
    videos: dict[str, bytes] = field(default_factory=dict)
    quarantine: list[QuarantineEntry] = field(default_factory=list)


def slice_signals(signals: PairSignals, start: int, end: int) -> PairSignals:
    """The measurements of frames [start, end) (pairs [start, end - 1))."""
    return replace(
        signals,
        luma=signals.luma[start:end],
        sharpness=signals.sharpness[start:end],
        flow=signals.flow[start : end - 1],
        residual=signals.residual[start : end - 1],
        edge_residual=signals.edge_residual[start : end - 1],
        residual_maps=signals.residual_maps[start : end - 1],
    )


def describe_camera(c2w: np.ndarray) -> str:
    """A short phrase for the camera path, e.g. 'the camera moves forward and turns left'."""
    end = c2w[-1]
    forward, right, up = end[2, 3], end[0, 3], -end[1, 3]
    yaw = math.degrees(math.atan2(end[0, 2], end[2, 2]))
    pitch = math.degrees(math.asin(float(np.clip(-end[1, 2], -1.0, 1.0))))
    scale = max(1e-9, float(np.linalg.norm(c2w[1:, :3, 3] - c2w[:-1, :3, 3], axis=1).mean()) * len(c2w))
    parts = []
    if abs(forward) > 0.25 * scale and abs(forward) > 1e-6:
        parts.append("moves forward" if forward > 0 else "moves backward")
    if abs(right) > 0.25 * scale and abs(right) > 1e-6:
        parts.append("strafes right" if right > 0 else "strafes left")
    if abs(up) > 0.25 * scale and abs(up) > 1e-6:
        parts.append("rises" if up > 0 else "sinks")
    if abs(yaw) >= 5:
        parts.append("turns right" if yaw > 0 else "turns left")
    if abs(pitch) >= 5:
        parts.append("tilts up" if pitch > 0 else "tilts down")
    if not parts:
        return "the camera stays still"
    return "the camera " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def _fetch(uri: str, workdir: Path, settings: Settings | None) -> Path:
    if scheme_of(uri) is Scheme.local:
        return as_local_path(uri)
    local = workdir / Path(uri).name
    storage.download_file(uri, local, settings=settings)
    return local


def _mp4_bytes(frames: np.ndarray, fps: float, crf: int, workdir: Path) -> bytes:
    path = workdir / "clip.mp4"
    encode_mp4(frames, path, fps=max(1, round(fps)), crf=crf)
    data = path.read_bytes()
    path.unlink()
    return data


def _clip_id(pair: SourcePair, shot: int, piece: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in pair.name)
    return f"{safe}-s{shot:02d}-p{piece:02d}"


def process_pair(
    pair: SourcePair,
    cfg: CurationConfig,
    captioner: Captioner,
    *,
    shard: str,
    settings: Settings | None = None,
) -> PairResult:
    """Curate one pair; errors inside it are quarantined with reason ``failed`` and the traceback tail."""
    result = PairResult()
    try:
        with tempfile.TemporaryDirectory(prefix="worldloop-curate-") as tmp:
            _process(pair, cfg, captioner, shard, settings, Path(tmp), result)
    except Exception as err:  # one bad pair must never stop a run
        log.warning("curation of %s failed: %s", pair.name, err)
        tail = traceback.format_exc(limit=-2).strip().splitlines()[-1]
        result = PairResult(
            quarantine=[
                QuarantineEntry(
                    source=pair.video_uri,
                    source_name=pair.name,
                    reason=Reason.failed,
                    detail=f"{type(err).__name__}: {err} ({tail})"[:500],
                )
            ]
        )
    return result


def _process(
    pair: SourcePair,
    cfg: CurationConfig,
    captioner: Captioner,
    shard: str,
    settings: Settings | None,
    workdir: Path,
    result: PairResult,
) -> None:
    def drop(reason: Reason, detail: str, **where: int) -> None:
        result.quarantine.append(
            QuarantineEntry(
                source=pair.video_uri, source_name=pair.name, reason=reason, detail=detail, **where
            )
        )

    # 1. Decode.
    path = _fetch(pair.video_uri, workdir, settings)
    if os.path.getsize(path) == 0:
        return drop(Reason.unreadable, "zero-byte file")
    try:
        frames, fps = decode_video(path)
    except (av.FFmpegError, OSError) as err:
        return drop(Reason.unreadable, f"cannot open the video container: {err}"[:300])
    except ValueError as err:
        return drop(Reason.undecodable, str(err)[:300])
    if not math.isfinite(fps) or fps <= 0:
        fps = 16.0
    caption: str | None = None
    note: str | None = "no caption file"
    if pair.caption_uri is not None:
        caption, note = decode_caption(storage.read_bytes(pair.caption_uri, settings=settings))
    metadata = None
    if pair.metadata_uri is not None:
        metadata = read_metadata_camera(storage.read_bytes(pair.metadata_uri, settings=settings), len(frames))

    # 2. Shots and pieces.
    signals = analyse(frames, work_size=cfg.work_size)
    cuts = detect_cuts(signals, cfg.shots)
    height, width = frames.shape[1:3]
    for shot, (s0, s1) in enumerate(shot_ranges(len(frames), cuts)):
        for piece, (a, b) in enumerate(chunk_ranges(s0, s1, cfg.quality.max_frames)):
            where = {"shot": shot, "start_frame": a, "end_frame": b}
            # 3. Quality.
            stats = shot_stats(signals, a, b)
            failed = check_quality(stats, b - a, cfg.quality)
            if failed is not None:
                drop(failed[0], failed[1], **where)
                continue
            # 4. Camera: metadata when present, else estimated from the frames.
            if metadata is not None:
                K, c2w = metadata[0][a:b], np.linalg.inv(metadata[1][a]) @ metadata[1][a:b]
                camera = CameraTrack(
                    source="metadata", confidence=1.0, intrinsics=K.tolist(), c2w=c2w.tolist()
                )
            else:
                est = estimate_camera(frames[a:b], cfg.camera)
                c2w = est.c2w
                camera = CameraTrack(
                    source="estimated",
                    confidence=float(est.confidence),
                    intrinsics=est.intrinsics.tolist(),
                    c2w=est.c2w.tolist(),
                )
            stats["camera_confidence"] = camera.confidence
            # 5. Interaction and captions.
            clip_id = _clip_id(pair, shot, piece)
            candidate = mine_interaction(
                slice_signals(signals, a, b), cfg.interaction, width=width, height=height
            )
            onset = candidate.onset_frame if candidate is not None else None
            keys = pick_keyframes(list(range(b - a)), cfg.caption_frames, onset)  # clip frame indices
            request = CaptionRequest(
                clip_id=clip_id,
                frames=[frames[a + i] for i in keys],
                frame_indices=keys,
                num_frames=b - a,
                fps=fps,
                source_caption=caption,
                camera_motion=describe_camera(c2w),
                interaction=candidate,
            )
            answer = captioner.caption(request)
            result.videos[clip_id] = _mp4_bytes(frames[a:b], fps, cfg.crf, workdir)
            result.clips.append(
                CuratedClip(
                    clip_id=clip_id,
                    shard=shard,
                    video=f"{clip_id}.mp4",
                    source=pair.video_uri,
                    source_name=pair.name,
                    shot=shot,
                    piece=piece,
                    start_frame=a,
                    frames=b - a,
                    fps=fps,
                    width=int(width),
                    height=int(height),
                    camera=camera,
                    captions=answer.captions,
                    interaction=answer.interaction,
                    interaction_onset=candidate.onset_frame
                    if candidate is not None and answer.interaction is not None
                    else None,
                    captioner=answer.captioner,
                    source_caption=caption,
                    caption_note=note,
                    stats={k: round(v, 6) for k, v in stats.items()},
                )
            )
