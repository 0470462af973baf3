"""The generator deployment: one replica = one engine on N devices (DESIGN.md §9).

Sessions stick to the replica that holds their stream through Ray Serve's model multiplexing: the
ingress tags every call with ``multiplexed_model_id=<session id>`` and the router prefers the replica
that has that id loaded. A replica that does not hold the stream (it restarted, or LRU-evicted it)
answers :class:`~worldloop.serving.engine.SessionNotFound`, and the ingress rebuilds the stream from
the session's last frame.

Serving ``models:/NAME@ALIAS`` the replica pins the version the alias names (once per load:
:func:`~worldloop.platform.registry.pin_version`) and loads exactly that one. It then polls the
registry; when the alias moves (a promotion or a rollback) it loads the new version next to the old one,
switches, and frees the old: new sessions get the new model at once, running ones are rebuilt on it
from their last frames — no downtime.

``champion`` is followed only along a signed promotion chain (:mod:`worldloop.platform.signing`,
checked by :func:`~worldloop.platform.registry.pin_version`): a replica does not start on a champion that
does not verify, and a running one refuses a move that does not — it keeps serving the version it has,
logs the refusal once and reports it in :meth:`Generator.follow_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from worldloop.model.camera.actions import ActionFrame
from worldloop.platform.registry import PinnedVersion, UnverifiedChampion, pin_version
from worldloop.platform.uri import ModelKind, ModelURI
from worldloop.serving.config import EngineConfig
from worldloop.serving.engine import Block, EncodedBlock, EngineInfo, SessionNotFound, VideoEngine
from worldloop.serving.engine_factory import build_engine
from worldloop.serving.frames import decode_image, encode_frame
from worldloop.settings import get_settings

log = logging.getLogger(__name__)

MAX_SESSIONS_PER_REPLICA = 32


def encode_block(block: Block, fmt: str, quality: int, *, version: str | None) -> EncodedBlock:
    """A block as the ingress receives it: the encoded frames (``raw``: the uint8 array as ``pixels``)."""
    t0 = time.perf_counter()
    frames = [] if fmt == "raw" else [encode_frame(f, fmt, quality) for f in block.frames]
    return EncodedBlock(
        block=block.block,
        first_index=block.first_index,
        format=fmt,
        frames=frames,
        pixels=block.frames if fmt == "raw" else None,
        recached=block.recached,
        instruction=block.instruction,
        generate_ms=block.generate_ms,
        decode_ms=block.decode_ms,
        encode_ms=(time.perf_counter() - t0) * 1000.0,
        version=version,
    )


def pin(uri: ModelURI) -> PinnedVersion | None:
    """The registry version ``uri`` names now (one lookup), or None for a preset or a checkpoint; raises
    :class:`UnverifiedChampion` for a ``champion`` whose signed promotion chain does not verify."""
    return pin_version(uri, settings=get_settings()) if uri.kind is ModelKind.registry else None


@dataclass(frozen=True)
class FollowState:
    """What a replica following an alias serves, and what it refused to switch to."""

    version: str | None  # the version served
    refusals: int  # moves of the alias refused since the replica started (each counted once)
    last_refusal: str | None  # why the latest was refused


class _Slot:
    """What Serve's multiplexing tracks per session on this replica; evicting it closes the stream."""

    def __init__(self, owner: Generator, session: str) -> None:
        self.owner, self.session = owner, session

    async def __del__(self) -> None:  # called by Serve on LRU eviction (awaited there)
        with contextlib.suppress(Exception):
            await self.owner.engine.close(self.session)


class Generator:
    """Ray Serve deployment class (wrapped by :func:`worldloop.serving.app.build_app`); ``cfg`` arrives
    validated and typed (Ray pickles it)."""

    def __init__(self, cfg: EngineConfig, *, poll_s: float = 30.0) -> None:
        self.cfg = cfg
        pinned = pin(cfg.model)
        self.engine: VideoEngine = build_engine(cfg, model=None if pinned is None else pinned.uri)
        self._poll: asyncio.Task[None] | None = None
        self.poll_s = poll_s
        self.follows = cfg.model.kind is ModelKind.registry and cfg.model.alias is not None
        self.refusals = 0  # see follow_state
        self.last_refusal: str | None = None
        self._refusing: str | None = None  # the refusal in force (repeated polls count it once)
        log.info("generator ready: %s", self.engine.info)

    # -- model following ----------------------------------------------------------------------------
    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check_for_update()
            except Exception:  # the registry being briefly away must not kill the replica
                log.exception("checking %s for a new version failed; keeping the current one", self.cfg.model)

    async def check_for_update(self) -> bool:
        """Swap to the version ``cfg.model`` names now if it moved (promotion, rollback); True if swapped.
        A ``champion`` that does not verify is refused: the current version keeps serving."""
        try:
            pinned = await asyncio.to_thread(pin, self.cfg.model)
        except UnverifiedChampion as refusal:
            self._refuse(str(refusal))
            return False
        self._refusing = None
        if pinned is None or str(pinned.version) == self.engine.info.version:
            return False
        await self.swap(pinned.uri)
        return True

    def _refuse(self, why: str) -> None:
        if why == self._refusing:  # the same refusal on every poll: logged and counted once
            return
        self._refusing, self.last_refusal = why, why
        self.refusals += 1
        log.error(
            "not following %s (still serving version %s): %s", self.cfg.model, self.engine.info.version, why
        )

    async def follow_state(self) -> FollowState:
        """The version served and the alias moves refused (for operators, through the deployment handle)."""
        return FollowState(self.engine.info.version, self.refusals, self.last_refusal)

    async def swap(self, model: ModelURI) -> str | None:
        """Load ``model`` (a pinned version), switch to it, free the old engine; returns the version.

        One device: the new model loads next to the old one, which keeps serving until the switch.
        Sequence-parallel workers own the replica's placement-group bundles, so with ``sp`` > 1 the
        old workers stop first and sessions wait for the new ones (seconds to a model load).
        """
        if self.cfg.sp > 1:
            await self.engine.shutdown()
        fresh = await asyncio.to_thread(build_engine, self.cfg, model=model)
        old, self.engine = self.engine, fresh
        if self.cfg.sp == 1:
            await old.shutdown()
        log.info("now serving %s version %s", self.cfg.model, fresh.info.version)
        return fresh.info.version

    # -- sessions -----------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=MAX_SESSIONS_PER_REPLICA)  # type: ignore[untyped-decorator]
    async def _slot(self, session: str) -> _Slot:
        return _Slot(self, session)

    async def _claim(self, session: str) -> None:
        """Register ``session`` with the multiplexing router (the call carries its id)."""
        if self.follows and self._poll is None:  # started on the replica's event loop, on first use
            self._poll = asyncio.get_running_loop().create_task(self._follow())
        if serve.get_multiplexed_model_id() != session:
            raise ValueError("calls must carry multiplexed_model_id=<session id>")
        await self._slot(session)

    async def info(self) -> EngineInfo:
        if self.follows and self._poll is None:
            self._poll = asyncio.get_running_loop().create_task(self._follow())
        return self.engine.info

    async def start(
        self,
        session: str,
        *,
        image: bytes | np.ndarray,
        prompt: str,
        instruction: str | None,
        seed: int,
        frame_index: int = 0,
        blocks: int = 0,
        fmt: str = "jpeg",
        quality: int = 85,
    ) -> EncodedBlock:
        """Start ``session`` (or rebuild it from its last frame: ``frame_index``/``blocks`` > 0)."""
        await self._claim(session)
        pixels = decode_image(image) if isinstance(image, bytes) else image
        block = await self.engine.start(
            session,
            image=pixels,
            prompt=prompt,
            instruction=instruction,
            seed=seed,
            frame_index=frame_index,
            blocks=blocks,
        )
        return await asyncio.to_thread(encode_block, block, fmt, quality, version=self.engine.info.version)

    async def step(
        self,
        session: str,
        *,
        keys: list[str],
        mouse: tuple[float, float],
        text: str | None,
        fmt: str = "jpeg",
        quality: int = 85,
        actions: list[ActionFrame] | None = None,
    ) -> EncodedBlock:
        """One block of ``session`` with ``keys`` and ``mouse``, or ``actions`` per frame (raises
        SessionNotFound when this replica does not hold it)."""
        await self._claim(session)
        stream = self.engine.generate(session, keys=keys, mouse=mouse, text=text, actions=actions)
        blocks = [b async for b in stream]
        version = self.engine.info.version
        return await asyncio.to_thread(encode_block, blocks[0], fmt, quality, version=version)

    async def holds(self, session: str) -> bool:
        """Whether this replica holds ``session``'s stream (and claims the id for routing)."""
        await self._claim(session)
        return await self.engine.holds(session)

    async def close(self, session: str) -> bool:
        return await self.engine.close(session)

    async def check_health(self) -> None:
        """Ray Serve's health probe: failing it restarts the replica."""
        await self.engine.check_health()

    def __del__(self) -> None:
        poll = getattr(self, "_poll", None)  # absent when __init__ refused to start (unverified champion)
        if poll is not None:
            poll.cancel()


__all__ = ["FollowState", "Generator", "SessionNotFound", "encode_block"]
