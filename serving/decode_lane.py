"""Decode block k while block k+1 denoises (issue 19): a one-thread decode lane and the async loop that
keeps the two phases of consecutive blocks overlapped and the blocks in order.

The denoise of block k+1 needs only the KV cache (written by block k's clean pass before its decode
starts), never block k's frames; the decode needs only the block's latents and the stream's VAE decode
cache. So :class:`~worldloop.serving.engine.Streams` hands each denoised block to a :class:`DecodeLane`
— one thread, so decodes run one at a time in submission order (each stream's decode cache is causal),
and on CUDA one stream that waits on an event recorded after the denoise — and the engines run
:func:`overlapped`: the denoise of k+1 is under way while block k is decoded and yielded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
S = TypeVar("S")
P = TypeVar("P")


class DecodeLane:
    """One decode thread (and on ``cuda`` one CUDA stream): jobs run one at a time, in submission order."""

    def __init__(self, device: torch.device) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._last: concurrent.futures.Future[Any] | None = None

    def submit(self, job: Callable[[], T], *, reads: Sequence[Tensor]) -> concurrent.futures.Future[T]:
        """Run ``job`` after the jobs before it. On CUDA it runs on the lane's stream once the kernels
        queued so far on the caller's stream (the denoise that made its inputs) are done; ``reads`` are
        the caller-stream tensors it reads (latents, decode cache), kept from reuse until it has."""
        stream = self.stream
        if stream is None:
            future = self._pool.submit(job)
        else:
            ready = torch.cuda.Event()
            ready.record()  # on the caller's current stream

            def on_stream() -> T:
                with torch.cuda.stream(stream):
                    stream.wait_event(ready)
                    for tensor in reads:
                        tensor.record_stream(stream)
                    result = job()
                stream.synchronize()  # done means done: a drain() before frame 0's decode relies on it
                return result

            future = self._pool.submit(on_stream)
        self._last = future
        return future

    def drain(self) -> None:
        """Wait until every job submitted so far has finished (their errors stay with their futures)."""
        if self._last is not None:
            concurrent.futures.wait([self._last])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


async def overlapped(
    steps: Sequence[S],
    *,
    submit: Callable[[S], Awaitable[P]],
    collect: Callable[[P], Awaitable[T]],
) -> AsyncIterator[T]:
    """``collect(submit(step))`` for every step, in order, with the next step's ``submit`` (its denoise)
    running while this one is collected (decoded): each block is yielded as soon as it is decoded.

    A consumer that stops early leaves the step after the last one it took submitted: its block was
    generated and the stream moved past it, as if it had been taken.
    """
    pending: list[P] = []  # the block submitted and not yet collected (at most one)
    for step in steps:
        denoising = asyncio.ensure_future(submit(step))
        try:
            if pending:
                yield await collect(pending.pop())
        except BaseException:  # an error or an early stop: the denoise in flight finishes first
            await asyncio.wait([denoising])
            if not denoising.cancelled():
                denoising.exception()  # retrieved: the error being raised is the one to report
            raise
        pending.append(await denoising)
    if pending:
        yield await collect(pending.pop())
