"""Frames at the serving edge: decode uploaded images (validated), fit them to the served size, encode
generated frames for the wire, and the sample scene a session starts from without an upload.

Uploads are untrusted: the decoder refuses anything that is not a PNG/JPEG/WebP image, caps the pixel
count before decoding (decompression bombs) and reports a one-line reason that the API returns as 400.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ACCEPTED = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 40_000_000  # a 6k × 6k upload is plenty; larger ones are refused before decoding
# A SynthWorld frame (seed 3, 512×512), shipped with the play page: serving imports no data-generation step.
SAMPLE = Path(__file__).parent / "web" / "sample.png"


class ImageError(ValueError):
    """An upload that is not a usable image; the message says why (shown to the client)."""


def decode_base64_image(text: str) -> np.ndarray:
    """A base64 string (or ``data:image/...;base64,`` URL) → (H, W, 3) uint8 RGB."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ImageError("a data: URL image must be base64-encoded")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"image is not valid base64 ({err})") from None
    return decode_image(raw)


def decode_image(raw: bytes) -> np.ndarray:
    """PNG/JPEG/WebP bytes → (H, W, 3) uint8 RGB (alpha dropped, palette expanded)."""
    if not raw:
        raise ImageError("image is empty")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format not in ACCEPTED:
                raise ImageError(f"image format {img.format} is not accepted (use PNG, JPEG or WebP)")
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image is {img.width}x{img.height}: more than {MAX_PIXELS} pixels")
            if img.width < 8 or img.height < 8:
                raise ImageError(f"image is {img.width}x{img.height}: at least 8x8 pixels needed")
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ImageError(f"image could not be decoded ({type(err).__name__}: {err})") from None


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``image`` to cover ``height × width`` (aspect kept), then centre-crop to exactly that."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - height) // 2, (nw - width) // 2
    return resized[top : top + height, left : left + width].copy()


def encode_frame(frame: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """(H, W, 3) uint8 → encoded bytes. JPEG uses 4:2:0 at ``quality``; WebP lossy; PNG lossless."""
    buf = io.BytesIO()
    img = Image.fromarray(frame)
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=0)  # method 0: fastest, for streaming
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown frame format {fmt!r} (jpeg, webp or png)")
    return buf.getvalue()


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Frames in [-1, 1] (any float array) → uint8, the rounding every consumer uses."""
    out: np.ndarray = np.clip(np.rint((video.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=4)
def sample_image(height: int, width: int) -> np.ndarray:
    """The server's sample scene fitted to ``height × width`` (read-only)."""
    image = fit(decode_image(SAMPLE.read_bytes()), height, width)
    image.setflags(write=False)
    return image
