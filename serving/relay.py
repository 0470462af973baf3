"""The ingress's side of the generator deployment (DESIGN.md §9).

Calls for a session go to the replica that holds its stream (Ray Serve's model multiplexing, keyed by
the session id); a call that finds its replica gone is retried while Serve replaces it, up to the resume
timeout; and a session whose replica no longer holds its stream (it died, or a new model version was
swapped in) is rebuilt there from its record — last frame, prompt, instruction, counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ray.exceptions
from ray.serve.handle import DeploymentHandle

from worldloop.serving import protocol as p
from worldloop.serving.engine import EncodedBlock, EngineInfo, SessionNotFound
from worldloop.serving.sessions import ApiError, SessionRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
# The generator's replica went away (killed, node lost, restarting): the session is rebuilt elsewhere.
LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class GeneratorRelay:
    """Calls to the generator deployment behind ``handle`` on behalf of sessions."""

    def __init__(self, handle: DeploymentHandle[Any], *, resume_timeout_s: float) -> None:
        self.handle, self.resume_timeout_s = handle, resume_timeout_s
        self.known: EngineInfo | None = None  # what the generator serves, once asked
        self.ok = True  # False from a call that found the generator gone until one succeeds

    def replica(self, session: str) -> DeploymentHandle[Any]:
        """The handle whose calls go to the replica holding ``session``."""
        return self.handle.options(multiplexed_model_id=session)

    async def info(self) -> EngineInfo:
        if self.known is None:
            self.known = await self.handle.info.remote()
        return self.known

    async def follow_state(self) -> Any:
        """The answering replica's :class:`~worldloop.serving.generator.FollowState` (not cached: the
        alias it follows can move, or a move be refused, at any poll)."""
        return await self.retrying("model status", lambda: self.handle.follow_state.remote())

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` until it stops failing with a lost replica, up to the resume timeout (503)."""
        deadline = time.monotonic() + self.resume_timeout_s
        delay = 0.25
        while True:
            try:
                result = await call()
                self.ok = True
                return result
            except LOST as err:
                self.ok = False
                if time.monotonic() > deadline:
                    raise ApiError(
                        503, f"{what}: the generator is unavailable ({type(err).__name__})"
                    ) from err
                log.warning("%s: generator replica lost (%s); retrying", what, type(err).__name__)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def close(self, session: str) -> None:
        with contextlib.suppress(*LOST):
            await self.replica(session).close.remote(session)

    # -- sessions' streams ---------------------------------------------------------------------------
    async def start_stream(self, record: SessionRecord, image: bytes, *, resume: bool) -> EncodedBlock:
        """Start ``record``'s stream from ``image`` (its last frame when ``resume``)."""
        seed = (record.seed + record.blocks) % 2**63  # a rebuilt stream draws fresh noise (int64)
        out: EncodedBlock = await self.replica(record.id).start.remote(
            record.id,
            image=image,
            prompt=record.prompt,
            instruction=record.instruction,
            seed=seed,
            frame_index=record.frame_index,
            blocks=record.blocks,
            fmt=record.frames.format,
            quality=record.frames.quality,
        )
        record.model = record.model.model_copy(update={"version": out.version})
        if resume:
            record.resumes += 1
        else:
            record.last_frame = out.frames[-1]
        return out

    async def ensure_stream(self, record: SessionRecord) -> bool:
        """Make sure a generator replica holds ``record``'s stream; True when it had to be rebuilt."""

        async def attempt() -> bool:
            if await self.replica(record.id).holds.remote(record.id):
                return False
            await self.start_stream(record, record.last_frame, resume=True)
            return True

        return await self.retrying(f"session {record.id}", attempt)

    async def step(
        self, record: SessionRecord, msg: p.StepMessage
    ) -> list[tuple[p.BlockMessage, list[bytes]]]:
        """Generate ``msg.blocks`` blocks, rebuilding the stream once if the generator lost it."""
        out = []
        for i in range(msg.blocks):
            text = msg.text if i == 0 else None
            share = (msg.mouse[0] / msg.blocks, msg.mouse[1] / msg.blocks)
            t0 = time.perf_counter()

            async def call(text: str | None = text, share: tuple[float, float] = share) -> EncodedBlock:
                try:
                    result: EncodedBlock = await self.replica(record.id).step.remote(
                        record.id,
                        keys=[k.value for k in msg.keys],
                        mouse=share,
                        text=text,
                        fmt=record.frames.format,
                        quality=record.frames.quality,
                    )
                    return result
                except SessionNotFound:
                    await self.start_stream(record, record.last_frame, resume=True)
                    raise

            try:
                block = await self.retrying(f"session {record.id}", call)
            except SessionNotFound:  # rebuilt just now: run the block on the new stream
                block = await self.retrying(f"session {record.id}", call)
            total = (time.perf_counter() - t0) * 1000.0
            record.frame_index = block.first_index + len(block.frames) - 1
            record.blocks = block.block
            record.last_frame = block.frames[-1]
            record.last_active = time.time()
            record.recaches += block.recached
            record.instruction = block.instruction
            out.append((_header(block, total), block.frames))
        return out


def _header(block: EncodedBlock, total_ms: float) -> p.BlockMessage:
    """The play protocol's header of ``block``, which took ``total_ms`` from request to answer."""
    work = block.generate_ms + block.decode_ms + block.encode_ms
    return p.BlockMessage(
        block=block.block,
        first_index=block.first_index,
        count=len(block.frames),
        format=block.format,
        recached=block.recached,
        instruction=block.instruction,
        timing=p.Timing(
            queue_ms=max(0.0, total_ms - work),
            generate_ms=block.generate_ms,
            decode_ms=block.decode_ms,
            encode_ms=block.encode_ms,
            total_ms=total_ms,
        ),
    )
