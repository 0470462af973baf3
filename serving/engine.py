"""The video engine: many interactive streams on one model stack (DESIGN.md §9).

Layers, bottom up:

* :class:`Streams` — synchronous, one process: the model stack (world model, VAE, text encoder), one
  :class:`~worldloop.model.Rollout` and a state per session (KV cache with sinks + window, VAE decode
  cache, camera, noise generator). This is what every sequence-parallel worker runs; all workers of a
  replica make the same calls in the same order, so they hold the same streams. A block is denoised
  on the caller's thread and decoded on a :class:`~worldloop.serving.decode_lane.DecodeLane`, so the
  engines decode block k while block k+1 denoises (:func:`~worldloop.serving.decode_lane.overlapped`).
* :class:`VideoEngine` — the async protocol the Ray Serve generator talks to: start a session, generate
  its blocks, close it, health, shutdown.
* :class:`LocalEngine` — a VideoEngine running :class:`Streams` in this process (one device, or the
  CPU); :class:`worldloop.serving.workers.ShardedEngine` runs N sequence-parallel workers instead, and
  :func:`worldloop.serving.engine_factory.build_engine` picks one of the two.

The model stack comes from the platform layer (:func:`~worldloop.platform.stack.load_model_stack`):
weights, VAE, text encoder, trained size, fps and the sampling schedule all from the checkpoint's spec.

A session restored on another replica (the old one died) or after a model swap starts again from its
last frame, prompt and instruction, with frame numbering continuing: :meth:`VideoEngine.start` with
``frame_index`` > 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from worldloop.controls import Key
from worldloop.model import Rollout, StreamState
from worldloop.model.camera.actions import ActionFrame
from worldloop.platform.stack import load_model_stack
from worldloop.platform.uri import ModelURI
from worldloop.serving.config import EngineConfig
from worldloop.serving.decode_lane import DecodeLane, overlapped
from worldloop.serving.frames import fit, to_uint8

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

log = logging.getLogger(__name__)

PhaseHook = Callable[[str, int, str, float, float], None]
"""Called with (session, block, "denoise" | "decode", start, end), times from ``time.perf_counter``."""


@dataclass(frozen=True)
class EngineInfo:
    """What an engine serves, as clients see it."""

    uri: str  # the model URI asked for (an alias stays an alias; ``version`` says what it named)
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


@dataclass
class EncodedBlock:
    """A block as the generator deployment answers the ingress: its frames encoded for the wire."""

    block: int
    first_index: int
    format: str  # jpeg | webp | png; raw: ``pixels`` instead of ``frames``
    frames: list[bytes]  # one encoded image per frame (empty for raw)
    pixels: np.ndarray | None  # (n, H, W, 3) uint8 for raw, else None
    recached: bool
    instruction: str | None
    generate_ms: float
    decode_ms: float
    encode_ms: float
    version: str | None  # the registry version that made it (models:/ URIs)


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


def block_steps(
    *,
    keys: Sequence[Key | str],
    mouse: tuple[float, float],
    text: str | None,
    blocks: int,
    actions: Sequence[ActionFrame] | None,
) -> list[dict[str, Any]]:
    """The ``Streams.step`` arguments of each of ``blocks`` blocks: held ``keys`` with the ``mouse``
    motion shared out, or ``actions`` (per frame, ``blocks`` whole blocks of them) cut block by block;
    ``text`` goes with the first."""
    if actions is not None:
        if keys or mouse != (0.0, 0.0):
            raise ValueError("give per-frame actions or keys and mouse, not both")
        if not actions or len(actions) % blocks:
            raise ValueError(f"{len(actions)} per-frame actions do not split into {blocks} whole blocks")
        per = len(actions) // blocks
        spans: list[dict[str, Any]] = [
            {"actions": list(actions[i * per : (i + 1) * per])} for i in range(blocks)
        ]
    else:
        share = (mouse[0] / blocks, mouse[1] / blocks)
        spans = [{"keys": [Key(k).value for k in keys], "mouse": share} for _ in range(blocks)]
    return [{**span, "text": text if i == 0 else None} for i, span in enumerate(spans)]


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
    last_frame: np.ndarray | None = None  # (H, W, 3) uint8, for model swaps; set by the decode


@dataclass
class _Denoised:
    """A block whose clean latents are made (and its K/V committed), waiting for its decode."""

    stream: _Stream
    latents: torch.Tensor  # (1, C, block_frames, h, w)
    block: Block  # everything but its frames and decode time


@dataclass
class Streams:
    """Every session's stream on one model stack, in one process (not thread-safe: callers serialise;
    the decode lane is this object's own thread).

    ``model`` is what to load, default ``cfg.model``: the generator passes the registry version it
    pinned (``models:/NAME/VERSION``), so every sequence-parallel rank loads the same one.
    """

    cfg: EngineConfig
    model: ModelURI | None = None
    rank: int = 0
    returns_frames: bool = True  # False on sequence-parallel ranks > 0: they decode, rank 0 answers
    on_phase: PhaseHook | None = None  # each block's denoise and decode times (tests, tracing)
    _streams: dict[str, _Stream] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.cfg)
        stack = load_model_stack(self.model or self.cfg.model, seed=self.cfg.seed)
        self.stack = stack
        self.version = None if stack.version is None else str(stack.version)
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
        from worldloop.model.arch.dit import set_attention_backend

        set_attention_backend(model, self.cfg.attention)
        self.rollout = Rollout(
            model,
            vae=vae,
            text_encoder=stack.text_encoder,
            height=self.cfg.height or stack.spec.height,  # default: the size it was trained at
            width=self.cfg.width or stack.spec.width,
            timesteps=stack.timesteps,  # the checkpoint's schedule (a distilled student's own)
            compile=self.cfg.compile,
        )
        self.dtype = dtype
        self.lane = DecodeLane(self.device)
        # CUDA graphs (compile="step" on CUDA) are recorded per thread (cudagraph trees keep thread-local
        # state), and callers reach us from a pool of threads: every denoise runs on this one thread.
        self._model_thread = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="denoise")
            if self.rollout.compiled is not None and self.rollout.compiled.graphs
            else None
        )
        self.decodes = True  # False on a sequence-parallel rank left out of the decode (see parallelize)

    def parallelize(self, group: ProcessGroup | None) -> None:
        """Shard every forward over ``group`` (Ulysses sequence parallel) and every decode over its
        ranks (height-tiled, :mod:`worldloop.model.parallel.vae_decode`); before any session starts.

        ``group`` must span the world (``None`` or ``dist.group.WORLD``): every process calls this.
        """
        import torch.distributed as dist

        from worldloop.model.parallel import apply_sequence_parallel
        from worldloop.model.parallel.vae_decode import apply_tiled_decode

        apply_sequence_parallel(self.rollout.model, group)
        # The decode has a group of its own: block k decodes while block k+1 denoises, so its exchanges
        # run beside the denoise's all-to-alls and must not share their channel. Each member decodes at
        # least one latent row: with more ranks than rows, the last ranks sit the decode out.
        rows = self.rollout.height // self.rollout.vae.cfg.spatial_stride
        world = list(range(dist.get_world_size())) if group is None else dist.get_process_group_ranks(group)
        members = world[:rows]
        decode_group = dist.new_group(members)  # every process calls new_group, member or not
        if dist.get_rank() in members:
            apply_tiled_decode(self.rollout.vae, decode_group)
        else:
            self.decodes = False

    # -- introspection ------------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        return EngineInfo(
            uri=str(self.cfg.model),
            version=self.version,
            preset=self.stack.preset,
            height=self.rollout.height,
            width=self.rollout.width,
            frames_per_block=self.rollout.frames_per_block,
            fps=self.stack.spec.fps,
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
        self.lane.drain()  # frame 0 is decoded here: after the blocks in the lane, one decode at a time
        t0 = time.perf_counter()
        pixels = fit(image, rollout.height, rollout.width)
        x = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
        generator = torch.Generator().manual_seed(seed)
        rollout.generator = generator
        state, first = rollout.start(x, prompt=prompt, instruction=instruction)
        frames = self._frames(first) if self.returns_frames else np.zeros((1, 0, 0, 3), np.uint8)
        stream = _Stream(state, generator, frame_index, blocks)
        stream.last_frame = frames[-1] if self.returns_frames else None
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
        actions: Sequence[ActionFrame] | None = None,
    ) -> Block:
        """Generate ``session``'s next block with ``keys`` held and ``mouse`` moved over it, or with
        ``actions``, one per video frame (a recorded trajectory: the camera follows them frame by frame,
        as the model conditions on per-frame poses); a new ``text`` instruction recaches once.

        Denoise, then decode: nothing overlaps. :meth:`submit` returns after the denoise instead."""
        return self.submit(session, keys=keys, mouse=mouse, text=text, actions=actions).result()

    def submit(
        self,
        session: str,
        *,
        keys: Sequence[Key | str] = (),
        mouse: tuple[float, float] = (0.0, 0.0),
        text: str | None = None,
        actions: Sequence[ActionFrame] | None = None,
    ) -> concurrent.futures.Future[Block]:
        """Denoise ``session``'s next block (as :meth:`step`) here and queue its decode on the lane:
        the next call may denoise the block after while this one decodes. Blocks decode in call order."""
        stream = self._streams.get(session)
        if stream is None:
            raise SessionNotFound(session)
        rollout = self.rollout
        rollout.generator = stream.generator
        recaches = stream.state.recaches
        t0 = time.perf_counter()
        if actions is None:
            actions = block_actions(keys, mouse, rollout.frames_per_block)
        elif len(actions) != rollout.frames_per_block:
            raise ValueError(
                f"a block takes {rollout.frames_per_block} per-frame actions, got {len(actions)}"
            )
        latents = self._denoise(stream.state, list(actions), text)
        t1 = time.perf_counter()
        stream.blocks += 1
        self._phase(session, stream.blocks, "denoise", t0, t1)
        first = stream.frame_index + 1
        stream.frame_index += rollout.frames_per_block
        recached = stream.state.recaches > recaches
        no_frames = np.zeros((0, 0, 0, 3), np.uint8)
        ms = (t1 - t0) * 1000.0
        block = Block(session, stream.blocks, first, no_frames, recached, stream.state.instruction, ms, 0.0)
        job = _Denoised(stream, latents, block)
        reads = [latents, *(t for t in stream.state.decode_cache.past if t is not None)]
        return self.lane.submit(lambda: self._decode(job), reads=reads)

    def _denoise(self, state: StreamState, actions: list[ActionFrame], text: str | None) -> torch.Tensor:
        """The block's clean latents (its K/V committed), on the denoise thread when there is one."""

        def run() -> torch.Tensor:
            latents = self.rollout.denoise(state, actions, instruction=text)
            if self.device.type == "cuda":  # this thread's stream only: a decode in the lane keeps running
                torch.cuda.current_stream(self.device).synchronize()
            return latents

        return run() if self._model_thread is None else self._model_thread.submit(run).result()

    def _decode(self, job: _Denoised) -> Block:
        """The lane's job: decode ``job``'s latents with its stream's VAE cache (in block order)."""
        t0 = time.perf_counter()
        frames = job.block.frames  # none: a rank > 0, or one left out of the decode
        if self.decodes:
            video = self.rollout.decode(job.stream.state, job.latents)
            if self.returns_frames:
                frames = self._frames(video)
                job.stream.last_frame = frames[-1]
        t1 = time.perf_counter()
        self._phase(job.block.session, job.block.block, "decode", t0, t1)
        return dataclasses.replace(job.block, frames=frames, decode_ms=(t1 - t0) * 1000.0)

    def _phase(self, session: str, block: int, phase: str, start: float, end: float) -> None:
        if self.on_phase is not None:
            self.on_phase(session, block, phase, start, end)

    def recaches(self, session: str) -> int:
        stream = self._streams.get(session)
        if stream is None:
            raise SessionNotFound(session)
        return stream.state.recaches

    def close(self, session: str) -> bool:
        """Drop ``session``'s stream; a decode of it still in the lane finishes (its future answers)."""
        return self._streams.pop(session, None) is not None

    def shutdown(self) -> None:
        """Finish the decodes in the lane and stop its thread (and the denoise thread, if any)."""
        self.lane.shutdown()
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=True)


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
        actions: Sequence[ActionFrame] | None = None,
    ) -> AsyncIterator[Block]: ...

    async def close(self, session: str) -> bool: ...

    async def holds(self, session: str) -> bool: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...


class LocalEngine:
    """A :class:`VideoEngine` over :class:`Streams` in this process; denoises run in a worker thread, one
    at a time (a device runs one block at full speed better than two interleaved), each beside the
    decode of the block before it in the streams' decode lane."""

    def __init__(self, cfg: EngineConfig, *, model: ModelURI | None = None) -> None:
        self.cfg = cfg
        self.streams = Streams(cfg, model)
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
        actions: Sequence[ActionFrame] | None = None,
    ) -> AsyncIterator[Block]:
        steps = block_steps(keys=keys, mouse=mouse, text=text, blocks=blocks, actions=actions)

        async def submit(step: dict[str, Any]) -> concurrent.futures.Future[Block]:
            future: concurrent.futures.Future[Block] = await asyncio.to_thread(
                self._run, self.streams.submit, session, **step
            )
            return future

        async for block in overlapped(steps, submit=submit, collect=asyncio.wrap_future):
            yield block

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
            self.streams.shutdown()

        await asyncio.to_thread(close_all)
