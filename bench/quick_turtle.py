"""Quick timing of turtle_step, fused vs the pure-PyTorch reference (a development aid; the
benchmark numbers to quote come from the bench/ suite).

    OMP_NUM_THREADS=2 python3 -m bench.quick_turtle [--n 1000000] [--threads 2] [--compile]

Times forward, and forward + backward (every input's gradient), for the paper's 3 -> 5 x 20 -> 1
network in float32, and prints the reference / fused ratios.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from learnedopt import reference
from learnedopt.ops import available, turtle_step, use_backend


def paper_net(generator: torch.Generator, inputs: int = 3, width: int = 20, depth: int = 5):
    sizes = [inputs] + [width] * depth + [1]
    weights = [torch.randn(o, i, generator=generator) / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    biases = [torch.randn(o, generator=generator) * 0.1 for o in sizes[1:]]
    return weights, biases


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(reference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not available("cpu", "turtle_step"):
        raise SystemExit("the fused CPU kernel is not built: python3 setup.py build_ext --inplace")

    gen = torch.Generator().manual_seed(0)
    weights, biases = paper_net(gen)
    theta, grad, m, alpha = (torch.randn(args.n, generator=gen) for _ in range(4))
    step = 3

    def forward(fn):
        return lambda: fn(theta, grad, m, step, alpha, weights, biases, 0.9, 10.0)

    leaves = [grad, alpha, *weights, *biases]
    leaves = [x.detach().requires_grad_() for x in leaves]
    g_theta, g_m = torch.randn(args.n, generator=gen), torch.randn(args.n, generator=gen)

    def forward_backward(fn):
        def run():
            grad_, alpha_, *params = leaves
            out_theta, out_m = fn(theta, grad_, m, step, alpha_, params[:6], params[6:], 0.9, 10.0)
            torch.autograd.grad((out_theta, out_m), leaves, (g_theta, g_m))
        return run

    def fused(*a):
        with use_backend("fused"):
            return turtle_step(*a)

    candidates = {"reference": reference.turtle_step, "fused": fused}
    if args.compile:
        candidates["compiled reference"] = torch.compile(reference.turtle_step, dynamic=False)

    print(f"turtle_step, float32, n = {args.n}, {torch.get_num_threads()} threads")
    results = {}
    for name, fn in candidates.items():
        fwd = best_ms(forward(fn), args.repeats)
        fb = best_ms(forward_backward(fn), args.repeats)
        results[name] = (fwd, fb)
        print(f"  {name:20s} forward {fwd:9.2f} ms   forward+backward {fb:9.2f} ms")
    f_fwd, f_fb = results["fused"]
    for name, (fwd, fb) in results.items():
        if name != "fused":
            print(f"  fused speed-up over {name}: forward {fwd / f_fwd:.1f}x, "
                  f"forward+backward {fb / f_fb:.1f}x")


if __name__ == "__main__":
    main()
