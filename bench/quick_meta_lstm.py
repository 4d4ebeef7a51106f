"""Dev aid: quick timings of the fused meta_lstm_step against the eager and torch.compile'd
reference (float32). Not the project's benchmark (that is bench/'s job); numbers vary with load.

    PYTHONPATH=. OMP_NUM_THREADS=2 python3 bench/quick_meta_lstm.py --n 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from learnedopt import ops, reference


def make_inputs(n: int, hidden: int, input_size: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1) * scale

    return [r(n), r(n, scale=0.1), r(()).abs(), r(n, hidden), r(n, hidden), r(n), r(n),
            r(4 * hidden, input_size, scale=0.3), r(4 * hidden, hidden, scale=0.3), r(4 * hidden),
            r(4 * hidden), r(hidden + 2, scale=0.1), r(1), r(hidden + 2, scale=0.1), r(1)]


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--hidden", type=int, default=20)
    ap.add_argument("--input-size", type=int, default=4, choices=(1, 4))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.n, args.hidden, args.input_size)
    fused = lambda *a: torch.ops.learnedopt.meta_lstm_step(*a, 10.0, 0.0, False)  # noqa: E731
    eager = lambda *a: reference.meta_lstm_step(*a)  # noqa: E731
    candidates = {"fused": fused, "eager": eager}
    if not args.no_compile:
        candidates["compiled"] = torch.compile(reference.meta_lstm_step)

    def forward(fn):
        with torch.no_grad():
            return lambda: fn(*inputs)

    def forward_backward(fn):
        leaves = [t.clone().requires_grad_(True) for t in inputs]

        def run():
            outs = fn(*leaves)
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            for t in leaves:
                t.grad = None
        return run

    results = {}
    for name, fn in candidates.items():
        results[name] = (best_of(forward(fn), args.repeats), best_of(forward_backward(fn), args.repeats))
        print(f"{name:9s} forward {results[name][0] * 1e3:8.2f} ms   forward+backward "
              f"{results[name][1] * 1e3:8.2f} ms", flush=True)
    f_fwd, f_all = results["fused"]
    for name in candidates:
        if name != "fused":
            print(f"fused vs {name}: forward {results[name][0] / f_fwd:.2f}x, "
                  f"forward+backward {results[name][1] / f_all:.2f}x")
    print(f"n={args.n} hidden={args.hidden} D={args.input_size} threads={args.threads} "
          f"{ops.describe()}")


if __name__ == "__main__":
    main()
