"""Schemathesis hooks for the contract test: real images for the ``image-base64`` format.

The schema says a session's reference image is a base64 PNG/JPEG/WebP (its ``format``); JSON Schema
cannot say "decodes to an image", so positive cases draw real ones here — small, in every accepted
codec and mode — and negative cases stay the fuzzer's own.
"""

import base64
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from worldloop.serving.protocol import IMAGE_FORMAT


@st.composite
def _images(draw: st.DrawFn) -> str:
    height = draw(st.integers(8, 40))
    width = draw(st.integers(8, 40))
    codec = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"] if codec != "JPEG" else ["RGB", "L"]))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(buffer, codec)
    text = base64.b64encode(buffer.getvalue()).decode()
    return draw(st.sampled_from([text, f"data:image/{codec.lower()};base64,{text}"]))


schemathesis.openapi.format(IMAGE_FORMAT, _images())
