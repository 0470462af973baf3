"""Run every benchmark: ``python -m benchmarks`` (``make bench``)."""

from benchmarks import (
    bench_curation,
    bench_flow_matching,
    bench_fp8,
    bench_quality,
    bench_serving,
    bench_synthworld,
    bench_training,
    bench_vae,
    bench_world_model,
)

if __name__ == "__main__":
    benches = (
        bench_synthworld,
        bench_flow_matching,
        bench_fp8,
        bench_vae,
        bench_world_model,
        bench_curation,
        bench_training,
        bench_serving,
        bench_quality,
    )
    for bench in benches:
        print(f"\n== {bench.__name__.removeprefix('benchmarks.')} ==", flush=True)
        bench.main()
    bench_training.chain()
