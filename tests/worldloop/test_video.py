import av
import numpy as np
import pytest

from worldloop.video import decode_video, encode_mp4


def test_round_trip_keeps_every_frame(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 8, 12, 3), dtype=np.uint8).repeat(4, 0).repeat(8, 1).repeat(8, 2)
    frames = np.concatenate([base, 255 - base])[:, :64, :96]
    encode_mp4(frames, tmp_path / "v.mp4", fps=16, crf=10)
    decoded, fps = decode_video(tmp_path / "v.mp4")
    assert decoded.shape == frames.shape and fps == 16
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # yuv420p + crf 10
    assert list(tmp_path.iterdir()) == [tmp_path / "v.mp4"]  # no temp files left behind


def test_bad_frames_are_rejected_without_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 31, 32, 3), np.uint8), tmp_path / "odd.mp4", fps=8)
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((2, 32, 32, 3), np.float32), tmp_path / "f.mp4", fps=8)
    assert not list(tmp_path.iterdir())


def test_undecodable_file_raises(tmp_path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises((av.error.FFmpegError, ValueError)):
        decode_video(tmp_path / "empty.mp4")
