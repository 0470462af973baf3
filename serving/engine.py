"""The video engine: many interactive streams on one model stack (DESIGN.md §9).

Layers, bottom up:

* :class:`Streams` — synchronous, one process: the model stack (world model, VAE, text encoder), one
  :class:`~worldloop.model.Rollout` and a state per session (KV cache with sinks + window, VAE decode
  cache, camera, noise generator). This is what every sequence-parallel worker runs; all workers of a
  replica make the same calls in the same order, so they hold the same streams.
* :class:`VideoEngine` — the async protocol the Ray Serve generator talks to: start a session, generate
  its blocks, close it, health, shutdown.
* :class:`LocalEngine` — a VideoEngine running :class:`Streams` in this process (one device, or the
  CPU); :class:`worldloop.serving.workers.ShardedEngine` runs N sequence-parallel workers instead.

A session restored on another replica (the old one died) or after a model swap starts again from its
last frame, prompt and instruction, with frame numbering continuing: :meth:`VideoEngine.start` with
``frame_index`` > 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from worldloop.model import Rollout, StreamState
from worldloop.model.camera.actions import ActionFrame, Key
from worldloop.serving.images import fit, to_uint8

log = logging.getLogger(__name__)

DEFAULT_SIZES = {"tiny": (64, 64)}  # presets without a trained size; others default to 480×832
FALLBACK_SIZE = (480, 832)


class EngineConfig(BaseModel):
    """What a generator replica serves and how (validated once, at start)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("models:/worldloop@champion", description="preset:NAME, checkpoint path or models:/")
    height: int | None = Field(None, ge=16, le=2048, description="Frame height (default: trained size).")
    width: int | None = Field(None, ge=16, le=2048, description="Frame width (default: trained size).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, else fp32.")
    fp8: bool = Field(False, description="FP8 (e4m3) weights + dynamic activation scales; CUDA sm_89+.")
    attention: Literal["sdpa", "sage", "auto"] = Field("sdpa", description="Self-attention kernel.")
    compile: bool = Field(False, description="torch.compile the DiT blocks (regional; CUDA).")
    sp: int = Field(1, ge=1, le=64, description="Sequence-parallel workers per replica (devices).")
    fps: float = Field(16.0, gt=0, description="Playback rate the model was trained at.")
    seed: int = Field(0, ge=0, description="Weights seed of preset: models.")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine serves, as clients see it."""

    uri: str
    version: str | None
    preset: str
    height: int
    width: int
    frames_per_block: int
    fps: float
    sp: int
    device: str
    dtype: str


@dataclass
class Block:
    """One generated block (or frame 0 of a session): uint8 frames and where the time went."""

    session: str
    block: int  # 0 = the start frame
    first_index: int  # session-wide index of frames[0]
    frames: np.ndarray  # (n, H, W, 3) uint8
    recached: bool
    instruction: str | None
    generate_ms: float
    decode_ms: float


class SessionNotFound(KeyError):
    """The engine holds no stream for this session (never started here, closed, or lost with a replica)."""

    def __init__(self, session: str) -> None:
        super().__init__(session)
        self.session = session

    def __str__(self) -> str:
        return f"session {self.session} has no stream on this generator"


def block_actions(keys: Sequence[Key | str], mouse: tuple[float, float], frames: int) -> list[ActionFrame]:
    """Held keys + total mouse motion over a block → one :class:`ActionFrame` per frame."""
    held = frozenset(Key(k) for k in keys)
    dx, dy = mouse[0] / frames, mouse[1] / frames
    return [ActionFrame(keys=held, mouse_dx=dx, mouse_dy=dy) for _ in range(frames)]


def resolve_device(cfg: EngineConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass
class _Stream:
    state: StreamState
    generator: torch.Generator
    frame_index: int  # index of the last frame produced
    blocks: int = 0
    last_frame: np.ndarray | None = None  # (H, W, 3) uint8, for model swaps


@dataclass
class Streams:
    """Every session's stream on one model stack, in one process (not thread-safe: callers serialise)."""

    cfg: EngineConfig
    rank: int = 0
    decode: bool = True  # False on sequence-parallel ranks > 0: they hold the same latents
    version: str | None = None
    _streams: dict[str, _Stream] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from worldloop.components.evaluation.model_source import load_model

        uri = self.cfg.model
        if uri.startswith("models:/"):  # pin the version now: a later promotion is a swap, not a reload
            from worldloop.components.registry import resolve

            info = resolve(uri)
            self.version = str(info.version)
            uri = f"models:/{info.name}/{info.version}"
        self.device = resolve_device(self.cfg)
        stack = load_model(uri, seed=self.cfg.seed)
        self.stack = stack
        dtype = torch.float32
        if self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda"):
            dtype = torch.bfloat16
        model = stack.model.to(self.device, dtype)
        vae = stack.vae.to(self.device, dtype)
        if self.cfg.fp8:
            from worldloop.model.quant.fp8 import fp8_supported, quantize_fp8

            if not fp8_supported(self.device):
                raise RuntimeError(f"--fp8: float8 matmuls are not supported on {self.device}")
            for expert in model.experts:  # expert by expert: peak memory is one layer, not a model
                quantize_fp8(expert)
        from worldloop.model.arch.dit import compile_blocks, set_attention_backend

        set_attention_backend(model, self.cfg.attention)
        if self.cfg.compile:
            compile_blocks(model)
        height, width = self.cfg.height, self.cfg.width
        if height is None or width is None:
            trained = stack.trained_size if stack.trained_size and all(stack.trained_size) else None
            default = trained or DEFAULT_SIZES.get(stack.preset, FALLBACK_SIZE)
            height, width = height or default[0], width or default[1]
        self.rollout = Rollout(model, vae=vae, text_encoder=stack.text_encoder, height=height, width=width)
        self.dtype = dtype

    def parallelize(self, group: object) -> None:
        """Shard every forward over ``group`` (Ulysses sequence parallel); before any session starts."""
        from worldloop.model.parallel import apply_sequence_parallel

        apply_sequence_parallel(self.rollout.model, group)  # type: ignore[arg-type]

    # -- introspection ------------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        return EngineInfo(
            uri=self.cfg.model,
            version=self.version,
            preset=self.stack.preset,
            height=self.rollout.height,
            width=self.rollout.width,
            frames_per_block=self.rollout.frames_per_block,
            fps=self.cfg.fps,
            sp=self.cfg.sp,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def holds(self, session: str) -> bool:
        return session in self._streams

    # -- streams ------------------------------------------------------------------------------------
    def _frames(self, video: torch.Tensor) -> np.ndarray:
        """(1, 3, n, H, W) in [-1, 1] → (n, H, W, 3) uint8."""
        return to_uint8(video[0].float().permute(1, 2, 3, 0).cpu().numpy())

    def start(
        self,
        session: str,
        *,
        image: np.ndarray,
        prompt: str,
        instruction: str | None = None,
        seed: int = 0,
        frame_index: int = 0,
        blocks: int = 0,
    ) -> Block:
        """Begin (or restart) ``session`` from ``image`` (H, W, 3) uint8; returns its frame 0 as a Block."""
        rollout = self.rollout
        t0 = time.perf_counter()
        pixels = fit(image, rollout.height, rollout.width)
        x = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
        generator = torch.Generator().manual_seed(seed)
        rollout.generator = generator
        state, first = rollout.start(x, prompt=prompt, instruction=instruction)
        frames = self._frames(first) if self.decode else np.zeros((1, 0, 0, 3), np.uint8)
        stream = _Stream(state, generator, frame_index, blocks)
        stream.last_frame = frames[-1] if self.decode else None
        self._streams[session] = stream
        ms = (time.perf_counter() - t0) * 1000.0
        return Block(session, blocks, frame_index, frames, False, instruction, ms, 0.0)

    def step(
        self,
        session: str,
        *,
        keys: Sequence[Key | str] = (),
        mouse: tuple[float, float] = (0.0, 0.0),
        text: str | None = None,
    ) -> Block:
        """Generate ``session``'s next block with ``keys`` held; a new ``text`` instruction recaches once."""
        stream = self._streams.get(session)
        if stream is None:
            raise SessionNotFound(session)
        rollout = self.rollout
        rollout.generator = stream.generator
        recaches = stream.state.recaches
        t0 = time.perf_counter()
        actions = block_actions(keys, mouse, rollout.frames_per_block)
        latents = rollout.denoise(stream.state, actions, instruction=text)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        frames = np.zeros((0, 0, 0, 3), np.uint8)
        if self.decode:
            frames = self._frames(rollout.decode(stream.state, latents))
            stream.last_frame = frames[-1]
        t2 = time.perf_counter()
        stream.blocks += 1
        first = stream.frame_index + 1
        stream.frame_index += rollout.frames_per_block
        recached = stream.state.recaches > recaches
        return Block(
            session,
            stream.blocks,
            first,
            frames,
            recached,
            stream.state.instruction,
            (t1 - t0) * 1000.0,
            (t2 - t1) * 1000.0,
        )

    def recaches(self, session: str) -> int:
        stream = self._streams.get(session)
        if stream is None:
            raise SessionNotFound(session)
        return stream.state.recaches

    def close(self, session: str) -> bool:
        return self._streams.pop(session, None) is not None


class VideoEngine(Protocol):
    """What the generator deployment needs from an engine (in-process or sequence-parallel workers)."""

    @property
    def info(self) -> EngineInfo: ...

    async def start(
        self,
        session: str,
        *,
        image: np.ndarray,
        prompt: str,
        instruction: str | None = None,
        seed: int = 0,
        frame_index: int = 0,
        blocks: int = 0,
    ) -> Block: ...

    def generate(
        self,
        session: str,
        *,
        keys: Sequence[Key | str] = (),
        mouse: tuple[float, float] = (0.0, 0.0),
        text: str | None = None,
        blocks: int = 1,
    ) -> AsyncIterator[Block]: ...

    async def close(self, session: str) -> bool: ...

    async def holds(self, session: str) -> bool: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...


class LocalEngine:
    """A :class:`VideoEngine` over :class:`Streams` in this process; blocks run in a worker thread, one
    at a time (a device runs one block at full speed better than two interleaved)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.streams = Streams(cfg)
        self._lock = threading.Lock()  # Streams is not thread-safe; to_thread calls are serialised here
        self._closed = False

    @property
    def info(self) -> EngineInfo:
        return self.streams.info()

    def _run(self, fn, session: str, /, **kwargs):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._closed:  # swapped out for a new model version: the stream is rebuilt on the new one
                raise SessionNotFound(session)
            return fn(session, **kwargs)

    async def start(
        self,
        session: str,
        *,
        image: np.ndarray,
        prompt: str,
        instruction: str | None = None,
        seed: int = 0,
        frame_index: int = 0,
        blocks: int = 0,
    ) -> Block:
        return await asyncio.to_thread(
            self._run,
            self.streams.start,
            session,
            image=image,
            prompt=prompt,
            instruction=instruction,
            seed=seed,
            frame_index=frame_index,
            blocks=blocks,
        )

    async def generate(
        self,
        session: str,
        *,
        keys: Sequence[Key | str] = (),
        mouse: tuple[float, float] = (0.0, 0.0),
        text: str | None = None,
        blocks: int = 1,
    ) -> AsyncIterator[Block]:
        share = (mouse[0] / blocks, mouse[1] / blocks)
        for i in range(blocks):
            yield await asyncio.to_thread(
                self._run,
                self.streams.step,
                session,
                keys=keys,
                mouse=share,
                text=text if i == 0 else None,
            )

    async def close(self, session: str) -> bool:
        return await asyncio.to_thread(self._run, self.streams.close, session)

    async def holds(self, session: str) -> bool:
        return self.streams.holds(session)

    async def check_health(self) -> None:
        if self._closed:
            raise RuntimeError("engine is shut down")

    async def shutdown(self) -> None:
        def close_all() -> None:
            with self._lock:  # after the block in flight, if any
                self._closed = True
                for session in list(self.streams._streams):
                    self.streams.close(session)

        await asyncio.to_thread(close_all)


def build_engine(cfg: EngineConfig) -> VideoEngine:
    """The engine for ``cfg``: in-process for one worker, Ray sequence-parallel workers for ``sp`` > 1."""
    if cfg.sp == 1:
        return LocalEngine(cfg)
    from worldloop.serving.workers import ShardedEngine

    return ShardedEngine(cfg)
