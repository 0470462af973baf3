"""Batch generation over KServe v2 / Open Inference Protocol: the ``worldloop`` OIP model.

One request = one whole rollout: a reference image, a prompt and per-frame actions in, the video out.
It runs on the same generator replicas as the interactive sessions (a short-lived session each), so
``tritonclient.http`` callers and players share capacity and the model version::

    inputs   prompt        BYTES  [1]          scene description (required)
             actions       BYTES  [F]          one action per generated frame: "w", "w+a", "space", "none";
                                               any frame may change them (the camera follows each frame)
             image         UINT8  [H, W, 3]    reference frame (optional: the sample scene); fitted
             mouse         FP32   [F, 2]       per-frame mouse (dx, dy) (optional: zeros)
             instruction   BYTES  [1]          an instruction (optional) ...
             instruction_frame INT32 [1]       ... issued with the block holding this frame (default 1)
             seed          INT64  [1]          noise seed (optional: 0)
    outputs  video         UINT8  [1 + F', H, W, 3]   frame 0 (the reference) and the generated frames;
                                               F' = F rounded up to whole blocks (the last action held)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from worldloop.model.camera.actions import ActionFrame, parse_action
from worldloop.serving.engine import EncodedBlock, EngineInfo
from worldloop.serving.frames import sample_image
from worldloop.serving.oip import OipError, TensorMetadata

MAX_FRAMES = 512
T = TypeVar("T")


class Generation(Protocol):
    """What the OIP model needs from the ingress: the generator's facts and raw, unrecorded streams
    (:class:`~worldloop.serving.relay.GeneratorRelay` is one)."""

    @property
    def ok(self) -> bool:
        """False while the generator is found gone, until a call succeeds again."""
        ...

    @property
    def known(self) -> EngineInfo | None:
        """What the generator serves, once asked."""
        ...

    async def info(self) -> EngineInfo: ...

    def replica(self, session: str) -> Any:
        """A deployment handle whose calls go to the replica holding ``session``."""
        ...

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T: ...


def _text(inputs: dict[str, np.ndarray], name: str, *, required: bool) -> str | None:
    if name not in inputs:
        if required:
            raise OipError(400, f"input '{name}' is required")
        return None
    values = inputs[name].reshape(-1)
    if values.size != 1:
        raise OipError(400, f"input '{name}' must hold one string, got {values.size}")
    raw = values[0]
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise OipError(400, f"input '{name}' is not UTF-8") from None
    if not text.strip():
        raise OipError(400, f"input '{name}' is blank")
    return text


class WorldloopModel:
    """The :class:`~worldloop.serving.oip.OipModel` the ingress serves as ``worldloop``."""

    name = "worldloop"
    platform = "pytorch"
    inputs = [
        TensorMetadata(name="prompt", datatype="BYTES", shape=[1]),
        TensorMetadata(name="actions", datatype="BYTES", shape=[-1]),
        TensorMetadata(name="image", datatype="UINT8", shape=[-1, -1, 3]),
        TensorMetadata(name="mouse", datatype="FP32", shape=[-1, 2]),
        TensorMetadata(name="instruction", datatype="BYTES", shape=[1]),
        TensorMetadata(name="instruction_frame", datatype="INT32", shape=[1]),
        TensorMetadata(name="seed", datatype="INT64", shape=[1]),
    ]
    outputs = [TensorMetadata(name="video", datatype="UINT8", shape=[-1, -1, -1, 3])]

    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    @property
    def version(self) -> str:
        info = self.generation.known
        return info.version if info is not None and info.version else ""

    def ready(self) -> bool:
        # The ingress only gets traffic once Serve has the app RUNNING (generator replicas healthy);
        # after that, ready until a call finds the generator gone and until it is back.
        return self.generation.ok

    async def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        info = await self.generation.info()
        per_block = info.frames_per_block
        prompt = _text(inputs, "prompt", required=True)
        instruction = _text(inputs, "instruction", required=False)
        if "actions" not in inputs:
            raise OipError(400, "input 'actions' is required (one action per frame, e.g. 'w+a')")
        labels = [
            a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
            for a in inputs["actions"].reshape(-1)
        ]
        if not labels or len(labels) > MAX_FRAMES:
            raise OipError(400, f"input 'actions' must hold 1..{MAX_FRAMES} actions, got {len(labels)}")
        mouse = np.zeros((len(labels), 2), np.float32)
        if "mouse" in inputs:
            mouse = np.asarray(inputs["mouse"], np.float32)
            if mouse.shape != (len(labels), 2) or not np.isfinite(mouse).all():
                raise OipError(
                    400, f"input 'mouse' must be finite [{len(labels)}, 2], got {list(mouse.shape)}"
                )
        try:
            actions = [
                parse_action(a, mouse_dx=float(m[0]), mouse_dy=float(m[1]))
                for a, m in zip(labels, mouse, strict=True)
            ]
        except ValueError as err:
            raise OipError(400, f"input 'actions': {err}") from None
        at = 1
        if "instruction_frame" in inputs:
            at = int(inputs["instruction_frame"].reshape(-1)[0])
        seed = int(inputs["seed"].reshape(-1)[0]) if "seed" in inputs else 0
        if seed < 0:
            raise OipError(400, "input 'seed' must be ≥ 0")
        if "image" in inputs:
            image = np.ascontiguousarray(inputs["image"], dtype=np.uint8)
            if image.ndim == 4 and image.shape[0] == 1:
                image = image[0]
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
                raise OipError(
                    400, f"input 'image' must be [H, W, 3] uint8 (H, W ≥ 8), got {list(image.shape)}"
                )
        else:
            image = sample_image(info.height, info.width)
        return {"video": await self._rollout(image, prompt or "", actions, instruction, at, seed, per_block)}

    async def _rollout(
        self,
        image: np.ndarray,
        prompt: str,
        actions: list[ActionFrame],
        instruction: str | None,
        instruction_frame: int,
        seed: int,
        per_block: int,
    ) -> np.ndarray:
        session = f"oip-{uuid.uuid4().hex}"
        gen = self.generation.replica(session)

        async def start() -> EncodedBlock:
            first: EncodedBlock = await gen.start.remote(
                session, image=image, prompt=prompt, instruction=None, seed=seed, fmt="raw"
            )
            return first

        first = await self.generation.retrying("inference", start)
        assert first.pixels is not None
        video = [first.pixels]
        try:
            made = 0
            while made < len(actions):
                span = actions[made : made + per_block]
                span += [span[-1]] * (per_block - len(span))
                # the block holding ``instruction_frame`` (frames made+1 .. made+per_block) issues it
                issue = (
                    instruction if instruction is not None and made + per_block >= instruction_frame else None
                )
                block: EncodedBlock = await gen.step.remote(  # the camera follows every frame's action
                    session, keys=[], mouse=(0.0, 0.0), text=issue, fmt="raw", actions=span
                )
                assert block.pixels is not None
                video.append(block.pixels)
                made += per_block
        finally:
            with contextlib.suppress(Exception):
                await gen.close.remote(session)
        return np.concatenate(video, axis=0)
