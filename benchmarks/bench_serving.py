"""Serving speed on this machine: frames per second and action-to-frame latency through the whole app.

A real local Ray Serve app (HTTP proxy → ingress → generator → engine) serves ``preset:tiny`` at
64×64; 1 and then N concurrent WebSocket sessions each play ``--blocks`` blocks, one step in flight,
holding W. Reported per run, measured in that run:

* fps — frames received per second of wall time (per session, and summed over sessions);
* action→frame latency — from sending a step to receiving the first frame it produced (median, p90);
* where a block's time goes — generate (denoise + clean pass), VAE decode, encode, queue/transfer.

``python -m benchmarks.bench_serving [--sessions 1 4] [--blocks 12] [--model preset:tiny]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from typing import Any

import httpx
import websockets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _session(base: str, blocks: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=300) as http:
        created = await http.post(f"http://{base}/v1/sessions", json={"prompt": "a courtyard", "seed": 0})
        created.raise_for_status()
        sid = created.json()["id"]
    latencies, timings, frames = [], [], 0
    async with websockets.connect(f"ws://{base}/v1/sessions/{sid}/play", max_size=2**26) as ws:
        json.loads(await ws.recv())
        await ws.recv()
        t_start = time.perf_counter()
        for _ in range(blocks):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "step", "keys": ["w"]}))
            header = json.loads(await ws.recv())
            await ws.recv()
            latencies.append((time.perf_counter() - sent) * 1000.0)
            for _ in range(header["count"] - 1):
                await ws.recv()
            frames += header["count"]
            timings.append(header["timing"])
        wall = time.perf_counter() - t_start
    async with httpx.AsyncClient(timeout=60) as http:
        await http.delete(f"http://{base}/v1/sessions/{sid}")
    return {"fps": frames / wall, "latency": latencies, "timing": timings}


def _run(base: str, sessions: int, blocks: int) -> dict[str, Any]:
    async def all_sessions() -> list[dict[str, Any]]:
        return await asyncio.gather(*[_session(base, blocks) for _ in range(sessions)])

    results = asyncio.run(all_sessions())
    latency = sorted(x for r in results for x in r["latency"][1:])  # the first block warms up
    timing = [t for r in results for t in r["timing"][1:]]

    def mean(key: str) -> float:
        return statistics.fmean(t[key] for t in timing)

    return {
        "sessions": sessions,
        "fps_per_session": statistics.fmean(r["fps"] for r in results),
        "fps_total": sum(r["fps"] for r in results),
        "latency_ms_median": statistics.median(latency),
        "latency_ms_p90": latency[int(0.9 * (len(latency) - 1))],
        "generate_ms": mean("generate_ms"),
        "decode_ms": mean("decode_ms"),
        "encode_ms": mean("encode_ms"),
        "queue_ms": mean("queue_ms"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:tiny")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--blocks", type=int, default=12)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from worldloop.serving.app import build_app

    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": args.model, "device": "cpu"}), name="bench", route_prefix="/")
        base = f"127.0.0.1:{port}"
        info = httpx.get(f"http://{base}/v2/models/worldloop/config", timeout=60)
        info.raise_for_status()
        rows = [_run(base, n, args.blocks) for n in args.sessions]
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"model {args.model}, 64x64, CPU, one generator replica, {args.blocks} blocks per session, W held")
    print(
        f"{'sessions':>8} {'fps/session':>11} {'fps total':>9} {'act→frame p50':>13} {'p90':>7} "
        f"{'generate':>8} {'decode':>7} {'encode':>6} {'queue':>6}  (ms)"
    )
    for r in rows:
        print(
            f"{r['sessions']:>8} {r['fps_per_session']:>11.1f} {r['fps_total']:>9.1f} "
            f"{r['latency_ms_median']:>13.0f} {r['latency_ms_p90']:>7.0f} {r['generate_ms']:>8.0f} "
            f"{r['decode_ms']:>7.0f} {r['encode_ms']:>6.1f} {r['queue_ms']:>6.0f}"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"{last['sessions']} sessions vs {first['sessions']}: "
            f"total fps x{last['fps_total'] / first['fps_total']:.2f}, "
            f"latency x{last['latency_ms_median'] / first['latency_ms_median']:.2f}"
        )


if __name__ == "__main__":
    main()
