"""Sequence-parallel workers of one generator replica (DESIGN.md §9).

A replica that serves with ``sp`` = N owns N devices: Ray Serve reserves them as one placement group
(STRICT_PACK: one node, so the all-to-alls stay on NVLink/shared memory) whose bundle 0 holds the replica
itself and bundles 1..N one :class:`SPWorker` each. The workers form a ``torch.distributed`` group
(NCCL on GPUs, gloo on CPU) and each runs the same :class:`~worldloop.serving.engine.Streams` calls
in the same order; the model inside shards every forward over the group (Ulysses), so each worker
holds 1/N of the tokens and of the KV cache heads. Every worker decodes a band of each frame's rows
(height-tiled, on a process group of its own, :mod:`worldloop.model.parallel.vae_decode`) in its decode
lane, beside the next block's denoise; rank 0 returns the frames. A worker runs two calls at a time
(a threaded actor): one model call (start, submit, close — one at a time, in the same order on every
rank, under the engine's lock) and one ``collect`` of a decoded block.

The workers are owned by the replica's process: when the replica dies they die with it, and the
sessions they held are rebuilt elsewhere from their last frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, get_current_placement_group, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from worldloop.controls import Key
from worldloop.model.camera.actions import ActionFrame
from worldloop.platform.uri import ModelURI
from worldloop.serving.config import EngineConfig
from worldloop.serving.decode_lane import overlapped
from worldloop.serving.engine import (
    Block,
    EngineInfo,
    SessionNotFound,
    Streams,
    block_steps,
    resolve_device,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class SPWorker:
    """One rank: a process-group member holding a sharded copy of every stream (a Ray actor). ``cfg``
    and ``model`` arrive as the typed objects the replica holds (Ray pickles them)."""

    def __init__(self, cfg: EngineConfig, model: ModelURI, rank: int, world: int) -> None:
        self.cfg, self.model = cfg, model
        self.rank, self.world = rank, world
        self.streams: Streams | None = None
        # per session, the decodes submitted and not yet collected, oldest first
        self._decoding: dict[str, deque[concurrent.futures.Future[Block]]] = {}

    def rendezvous(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group (called on rank 0 only)."""
        return ray.util.get_node_ip_address(), _free_port()  # type: ignore[no-untyped-call]

    def setup(self, host: str, port: int) -> EngineInfo:
        import torch.distributed as dist

        device = resolve_device(self.cfg)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.world
        )
        self.streams = Streams(self.cfg, self.model, rank=self.rank, returns_frames=self.rank == 0)
        self.streams.parallelize(dist.group.WORLD)
        return self.streams.info()

    def _streams(self) -> Streams:
        if self.streams is None:
            raise RuntimeError("worker not set up")
        return self.streams

    def start(self, session: str, kwargs: dict[str, Any]) -> Block:
        return self._streams().start(session, **kwargs)

    def submit(self, session: str, kwargs: dict[str, Any]) -> None:
        """Denoise ``session``'s next block; its decode runs in the lane until :meth:`collect`."""
        future = self._streams().submit(session, **kwargs)
        self._decoding.setdefault(session, deque()).append(future)

    def collect(self, session: str) -> Block:
        """The oldest submitted block of ``session``, once decoded (runs beside a model call)."""
        queue = self._decoding.get(session)
        if not queue:
            raise SessionNotFound(session)
        return queue.popleft().result()

    def close(self, session: str) -> bool:
        self._decoding.pop(session, None)
        return self._streams().close(session)

    def ping(self) -> int:
        return self.rank


class ShardedEngine:
    """A :class:`~worldloop.serving.engine.VideoEngine` over ``cfg.sp`` :class:`SPWorker` actors.

    Every model operation goes to all ranks under one lock, so the ranks see the same sequence of
    calls; collecting a decoded block does not take it, so block k+1 denoises meanwhile. The answer is
    rank 0's (the one that returns frames). Every rank loads ``model`` (default ``cfg.model``; the
    generator passes the registry version it pinned, so the ranks cannot load different ones).
    """

    def __init__(self, cfg: EngineConfig, *, model: ModelURI | None = None) -> None:
        self.cfg = cfg
        n = cfg.sp
        gpus = 1 if self._wants_gpu() else 0
        pg = get_current_placement_group()
        first_bundle = 1
        self._own_pg: PlacementGroup | None = None
        if pg is None or len(pg.bundle_specs) < n + 1:  # not inside a Serve replica's group: make one
            bundle: dict[str, float] = {"CPU": 1.0, **({"GPU": float(gpus)} if gpus else {})}
            pg = placement_group([bundle] * n, strategy="STRICT_PACK")
            ray.get(pg.ready(), timeout=300)
            self._own_pg, first_bundle = pg, 0
        actor: Any = ray.remote(SPWorker)
        self.workers: list[Any] = [
            actor.options(
                num_cpus=1,
                num_gpus=gpus,
                max_concurrency=2,  # a model call and a collect (see the module docstring)
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=first_bundle + rank
                ),
            ).remote(cfg, model or cfg.model, rank, n)
            for rank in range(n)
        ]
        host, port = ray.get(self.workers[0].rendezvous.remote())
        infos = ray.get([w.setup.remote(host, port) for w in self.workers])
        self._info: EngineInfo = infos[0]
        self._lock = asyncio.Lock()
        self._sessions: set[str] = set()

    def _wants_gpu(self) -> bool:
        if self.cfg.device == "cuda":
            return True
        if self.cfg.device == "cpu":
            return False
        gpus = ray.cluster_resources().get("GPU", 0.0)  # type: ignore[no-untyped-call]
        return float(gpus) >= self.cfg.sp

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def _all(self, method: str, *args: Any) -> Any:
        async with self._lock:
            refs = [getattr(w, method).remote(*args) for w in self.workers]
            results = await asyncio.gather(*refs)
        return results[0]

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
        kwargs = dict(
            image=image,
            prompt=prompt,
            instruction=instruction,
            seed=seed,
            frame_index=frame_index,
            blocks=blocks,
        )
        result: Block = await self._all("start", session, kwargs)
        self._sessions.add(session)
        return result

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

        async def submit(step: dict[str, Any]) -> None:
            await self._all("submit", session, step)

        async def collect(_: None) -> Block:
            answers: list[Block] = await asyncio.gather(*[w.collect.remote(session) for w in self.workers])
            return answers[0]

        async for block in overlapped(steps, submit=submit, collect=collect):
            yield block

    async def close(self, session: str) -> bool:
        closed: bool = await self._all("close", session)
        self._sessions.discard(session)
        return closed

    async def holds(self, session: str) -> bool:
        return session in self._sessions

    async def check_health(self) -> None:
        await asyncio.wait_for(asyncio.gather(*[w.ping.remote() for w in self.workers]), timeout=30)

    async def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        if self._own_pg is not None:
            ray.util.remove_placement_group(self._own_pg)
