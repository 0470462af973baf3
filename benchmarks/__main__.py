"""Run every benchmark: ``python -m benchmarks``."""

from benchmarks import bench_synthworld

if __name__ == "__main__":
    bench_synthworld.main()
