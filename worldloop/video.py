"""Video frames as every part of worldloop passes them — (F, H, W, 3) uint8 RGB — their one input check,
and MP4 (H.264) encode/decode with PyAV. Writes are atomic: a reader never sees a partial file."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import av
import numpy as np


def check_frames(
    video: object, *, name: str = "frames", min_frames: int = 1, min_side: int = 1
) -> np.ndarray:
    """``video`` itself when it is a (F, H, W, 3) uint8 RGB array with F ≥ ``min_frames`` and
    H, W ≥ ``min_side``; otherwise a ValueError saying what is wrong with it."""
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (F, H, W, 3) uint8, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (F, H, W, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB (decode_video's output), got dtype {video.dtype}")
    if video.shape[0] < min_frames:
        what = "is empty" if video.shape[0] == 0 else f"has {video.shape[0]} frames"
        raise ValueError(f"{name} {what}: at least {min_frames} frame(s) needed")
    if min(video.shape[1:3]) < min_side:
        raise ValueError(
            f"{name} must be at least {min_side}x{min_side} pixels ({min_side} px a side), "
            f"got {video.shape[2]}x{video.shape[1]}"
        )
    return video


def encode_mp4(frames: np.ndarray, path: str | Path, *, fps: int, crf: int = 18) -> None:
    """Write (F, H, W, 3) uint8 RGB frames as H.264/yuv420p; the bytes depend only on the frames and
    settings (reproducible datasets).

    Two x264 settings make that hold: one thread, and no macroblock-tree rate control / lookahead.
    With x264's mbtree lookahead on (every preset's default), the same frames encoded twice in a
    long-running process (a curation run) came out different from run to run — the lookahead's
    result depended on the process's history, even single-threaded — while a small fresh process
    was stable; with it off, repeated curation runs give identical shards. mbtree mostly helps
    low-bitrate streaming; at the crf used for datasets its loss is a few % of file size.
    """
    check_frames(frames)
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"H.264 yuv420p needs even width and height, got {frames.shape[2]}x{frames.shape[1]}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "threads": "1",
                "x264-params": "mbtree=0:rc-lookahead=0",
            }
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def decode_video(path: str | Path | bytes) -> tuple[np.ndarray, float]:
    """All frames (F, H, W, 3) uint8 RGB and the stream's frame rate, from a file or from the bytes
    of one (a member read out of a shard)."""
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    name = "video bytes" if isinstance(path, bytes) else path
    with av.open(source, mode="r") as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate or stream.base_rate or 0)
    if not frames:
        raise ValueError(f"{name}: no decodable video frames")
    return np.stack(frames), rate
