"""Step time of the drop-in learned optimizers next to torch.optim.Adam, on a model with many tensors.

    python3 -m bench.optimizer --quick
    python3 -m bench.optimizer --device cuda

The model is a stack of Linear(width, width) layers holding --tensors parameter tensors (weights
and biases); its gradients are computed once and every timed call is one ``optimizer.step()``
(zero_grad is not part of it). LSTMOptimizer and TurtleOptimizer (learnedopt.optim, untrained rules:
speed does not depend on the weights) run with the fused kernels and with the pure-PyTorch
reference, and fused with their reducible state stored in bfloat16 (``state_dtype``); Adam runs as
a per-tensor loop, with foreach=True and with fused=True.

Each learned optimizer's row also gives its FLOP floor: the fused op's forward FLOP per coordinate
(bench/ops.py's FLOP_RULE) times the parameters, at the FP32 FMA peak measured in the same run, so
that the table says how close to Adam foreach the hardware lets a step come at all.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench import machine, results
from bench.timing import measure
from learnedopt import ops

# (name, backend, learned-optimizer op or None, how to build it)
CASES = (
    ("Adam (for-loop)", "none", None, lambda p: torch.optim.Adam(p, lr=1e-3, foreach=False)),
    ("Adam (foreach=True)", "none", None, lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    ("Adam (fused=True)", "none", None, lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
    ("LSTMOptimizer", "fused", "meta_lstm_step", lambda p: _learned("LSTMOptimizer", p)),
    ("LSTMOptimizer", "reference", "meta_lstm_step", lambda p: _learned("LSTMOptimizer", p)),
    ("LSTMOptimizer (bf16 state)", "fused", "meta_lstm_step",
     lambda p: _learned("LSTMOptimizer", p, state_dtype=torch.bfloat16)),
    ("TurtleOptimizer", "fused", "turtle_step", lambda p: _learned("TurtleOptimizer", p)),
    ("TurtleOptimizer", "reference", "turtle_step", lambda p: _learned("TurtleOptimizer", p)),
    ("TurtleOptimizer (bf16 state)", "fused", "turtle_step",
     lambda p: _learned("TurtleOptimizer", p, state_dtype=torch.bfloat16)),
)
BASELINE = "Adam (foreach=True)"


def _learned(name: str, params, **options):
    import learnedopt.optim
    return getattr(learnedopt.optim, name)(params, **options)


def forward_flop_per_coordinate(op: str) -> int:
    """The fused op's forward FLOP per coordinate for the optimizers' untrained default rules."""
    from bench.ops import meta_lstm_forward_flop, turtle_forward_flop
    from learnedopt.rules import MetaLSTMRule, TurtleRule
    if op == "meta_lstm_step":
        rule = MetaLSTMRule()
        return meta_lstm_forward_flop(rule.hidden_size, rule.input_size)
    rule = TurtleRule()
    return turtle_forward_flop([rule.weights[0].shape[1], *(w.shape[0] for w in rule.weights)])


def make_model(tensors: int, width: int, device: torch.device) -> nn.Module:
    if tensors < 2 or tensors % 2:
        raise SystemExit(f"--tensors must be an even number >= 2 (weight + bias per layer), got {tensors}")
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(tensors // 2)]).to(device)


def time_steps(name: str, build, tensors: int, width: int, device: torch.device, budget_s: float,
               min_samples: int):
    model = make_model(tensors, width, device)
    optimizer = build(model.parameters())  # before backward: the flat optimizers re-home .grad
    x = torch.randn(64, width, device=device, generator=None)
    loss = model(x).square().mean()
    loss.backward()
    loss = loss.detach()
    step = ((lambda _: optimizer.step(loss=loss)) if name.startswith("LSTMOptimizer")
            else (lambda _: optimizer.step()))
    # One warm-up call builds the optimizer state; the pure-PyTorch LSTM takes seconds per step.
    timing = measure(step, device, budget_s=budget_s, warmup_s=0.1 * budget_s, warmup_calls=1,
                     min_samples=min_samples)
    return timing, sum(p.numel() for p in model.parameters())


def benchmark(device, tensors: int, width: int, budget_s: float, min_samples: int = 5,
              log=print, fma_peak: float | None = None) -> list[dict]:
    """One row per (optimizer, backend), with step time relative to Adam foreach=True and, for
    the learned ones given ``fma_peak`` (FLOP/s), the FLOP floor of a step."""
    rows = []
    for name, backend, op, build in CASES:
        row = {"optimizer": name, "backend": backend, "op": op, "tensors": tensors, "width": width,
               "what": f"{name} [{backend}]"}
        if op is not None:
            try:
                import learnedopt.optim  # noqa: F401
            except ImportError as exc:
                rows.append({**row, "status": "skipped",
                             "reason": f"learnedopt.optim is not importable yet ({exc})"})
                continue
            if backend == "fused" and not ops.available(device, op):
                rows.append({**row, "status": "skipped",
                             "reason": f"no fused {op} kernel for {device.type} in this build"})
                continue
        try:
            with ops.use_backend("fused" if backend == "fused" else "reference"):
                timing, params = time_steps(name, build, tensors, width, device, budget_s,
                                            min_samples)
        except Exception as exc:  # e.g. fused Adam missing on this device/torch
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            log(f"  {row['what']}: {reason}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            rows.append({**row, "status": "skipped" if "Adam" in name else "error", "reason": reason})
            continue
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({**row, "status": "ok", "timing": timing.as_dict(), "parameters": params,
                     "coordinates_per_s": params / timing.median_s})
        log(f"  {row['what']}: {results.spread(timing.as_dict())} per step")
    base = next((r for r in rows if r["optimizer"] == BASELINE and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] != "ok":
            continue
        r["time_vs_adam_foreach"] = (r["timing"]["median_s"] / base["timing"]["median_s"]
                                     if base else None)
        if r["op"] is not None and fma_peak:
            flop = forward_flop_per_coordinate(r["op"]) * r["parameters"]
            r["flop_per_step"] = flop
            r["flop_floor_s"] = flop / fma_peak
            r["fraction_of_fma_peak"] = r["flop_floor_s"] / r["timing"]["median_s"]
            r["floor_vs_adam_foreach"] = (r["flop_floor_s"] / base["timing"]["median_s"]
                                          if base else None)
    return rows


def render_markdown(record: dict) -> str:
    rows = []
    for r in record["results"]:
        if r["status"] != "ok":
            continue
        floor = r.get("flop_floor_s")
        rows.append([r["optimizer"], r["backend"], results.spread(r["timing"]),
                     results.count(r["coordinates_per_s"]),
                     results.ratio(r.get("time_vs_adam_foreach")),
                     "—" if floor is None else
                     f"{results.seconds(floor)} ({results.ratio(r.get('floor_vs_adam_foreach'))})"])
    s = record["settings"]
    head = (f"**Optimizer step, {record['device'].upper()}** — one `step()` on a model of "
            f"{s['tensors']} tensors ({s['tensors'] // 2} × Linear({s['width']}, {s['width']}), "
            f"{results.count(s.get('parameters'))} parameters), median ± half the interquartile "
            f"range; time relative to Adam with foreach=True; FLOP floor: the learned op's FLOP at "
            f"the FP32 FMA peak measured in the run"
            + (f" ({s['fma_peak_flop_per_s'] / 1e9:.0f} GFLOP/s)" if s.get("fma_peak_flop_per_s")
               else "") + ", and that floor relative to Adam foreach.")
    return head + "\n\n" + results.table(
        ["optimizer", "backend", "time per step", "parameters/s", "time vs Adam foreach",
         "FLOP floor (vs Adam foreach)"], rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Step time of LSTMOptimizer / TurtleOptimizer (fused and reference) and "
                    "torch.optim.Adam (for-loop, foreach, fused) on a many-tensor model.",
        epilog="Example: python3 -m bench.optimizer --quick")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="short budgets")
    parser.add_argument("--tensors", type=int, default=100, help="parameter tensors (default 100)")
    parser.add_argument("--width", type=int,
                        help="Linear width (default 256 on CPU: 3.3M parameters, 128 with --quick: "
                             "0.8M; 1024 on CUDA: 52M)")
    parser.add_argument("--budget", type=float, help="seconds per case (default 2, 0.5 with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: all cores)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/...)")
    parser.add_argument("--label", help="a word saved with the result and in its file name")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = machine.setup_device(args.device, args.threads)
    width = args.width or (1024 if device.type == "cuda" else (128 if args.quick else 256))
    budget = args.budget or (0.5 if args.quick else 2.0)
    record = machine.run_header("optimizer", device, argv)
    record["label"] = args.label
    print(f"# bench.optimizer on {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {record['date']}\n# command: {record['command']}\n"
          f"# {ops.describe()}")
    fma_peak = None
    if device.type == "cpu":
        fma_peak, _ = machine.measure_cpu_fma_peak(0.3 if args.quick else 1.0)
    rows = benchmark(device, args.tensors, width, budget, 3 if args.quick else 5,
                     fma_peak=fma_peak)
    params = next((r["parameters"] for r in rows if r["status"] == "ok"), None)
    record["settings"] = {"tensors": args.tensors, "width": width, "parameters": params,
                          "budget_s": budget, "quick": args.quick, "fma_peak_flop_per_s": fma_peak,
                          "step": "optimizer.step() only, gradients fixed; LSTMOptimizer gets "
                                  "step(loss=...) with a precomputed loss tensor"}
    record["results"], record["complete"] = rows, True
    path = results.write_json(record, args.out or results.default_path(record, args.label))
    print("\n" + results.render(record) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
