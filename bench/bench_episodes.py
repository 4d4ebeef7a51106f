"""Episode sampling throughput of the Omniglot sampler, and the one-time decode into the cache.

    python3 -m bench.bench_episodes --data-root ../shared/data/omniglot [--device cuda]

Prints one line per setting: ways, shots, queries, meta-batch, episodes per second (median of
repeats). The decode is timed into a fresh temporary cache folder unless --cache-dir is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from learnedopt.tasks.omniglot import OmniglotTasks, load_omniglot_set


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def episodes_per_second(tasks: OmniglotTasks, batch: int, seconds: float, repeats: int) -> float:
    generator = torch.Generator(device=tasks.device).manual_seed(0)
    tasks.sample(batch, generator)  # warm-up (allocator, kernels)
    rates = []
    for _ in range(repeats):
        sync(tasks.device)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tasks.sample(batch, generator)
            n += 1
        sync(tasks.device)
        rates.append(n * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or scratch
        start = time.perf_counter()
        for name in ("images_background", "images_evaluation"):
            load_omniglot_set(args.data_root, name, 28, cache_dir)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for name in ("images_background", "images_evaluation"):
            load_omniglot_set(args.data_root, name, 28, cache_dir)
        cached = time.perf_counter() - start
        print(f"load 32,460 images at 28x28: first {first:.2f} s, from the cache {cached:.2f} s")

        results = {"device": args.device, "threads": torch.get_num_threads(),
                   "load_first_s": first, "load_cached_s": cached, "episodes": []}
        for ways, shots, queries, batch in ((5, 1, 15, 32), (20, 5, 15, 16), (200, 1, 1, 16)):
            tasks = OmniglotTasks(args.data_root, ways=ways, shots=shots, queries=queries,
                                  cache_dir=cache_dir, device=args.device)
            rate = episodes_per_second(tasks, batch, args.seconds, args.repeats)
            print(f"{ways:4d}-way {shots}-shot {queries:2d} queries, meta-batch {batch:3d}: "
                  f"{rate:10.0f} episodes/s on {args.device} ({torch.get_num_threads()} threads)")
            results["episodes"].append({"ways": ways, "shots": shots, "queries": queries,
                                        "batch": batch, "episodes_per_s": rate})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
