"""Speed of the three learned-optimizer ops: the pure-PyTorch reference run eagerly, the same
reference under torch.compile, and the fused kernel (learnedopt.ops with backend "fused").

    python3 -m bench.ops --quick             # 10^3..10^6 coordinates, short budgets (a few minutes)
    python3 -m bench.ops                     # CPU: 10^3..10^7
    python3 -m bench.ops --device cuda       # GPU: 10^3..10^8

For every op, pass (forward, forward+backward), implementation and size n it records the median
time per call and its spread, coordinates per second, the speed-up over eager and over compile,
and the fraction of the roofline: max(bytes / bandwidth, FLOP / FP32 rate) / time, with the
bandwidth and FP32 rate measured on the same device in the same run (bench/machine.py) and the
per-coordinate bytes and FLOP counted as stated in BYTES_RULE and FLOP_RULE below.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import machine, memory, results
from bench.timing import measure
from learnedopt import ops, reference
from learnedopt.rules import MetaLSTMRule, TurtleRule

IMPLS = ("eager", "compile", "fused")
MODES = ("forward", "forward+backward")
OP_NAMES = ("preprocess", "meta_lstm_step", "turtle_step")

BYTES_RULE = (
    "fewest bytes per coordinate: forward reads every per-coordinate input once and writes every "
    "per-coordinate output once; backward reads the per-coordinate inputs it needs and the output "
    "gradients and writes the input gradients; weights and other O(1) tensors are not counted")
FLOP_RULE = (
    "FLOP per coordinate of the forward pass: every matmul 2*in*out, every add/mul/bias 1, every "
    "sigmoid/tanh/log 1 (they cost several instructions, so the FLOP side of the roofline is a lower "
    "bound of the work); comparisons, selects and ReLU not counted; forward+backward counted as 3x "
    "the forward (one product for the input gradients and one for the weight gradients per forward "
    "product); a fused backward that recomputes the forward does more than this count")


@dataclass(frozen=True)
class OpSpec:
    """One op as benchmarked: how to build its inputs and what it must move and compute."""
    name: str
    shape: str
    # Per-coordinate element counts (see BYTES_RULE).
    forward_reads: int
    forward_writes: int
    backward_reads: int
    backward_writes: int
    forward_flop: int
    shared: Callable[[torch.device, torch.dtype], dict]          # weights, loss: O(1) tensors
    per_coordinate: Callable[[int, torch.device, torch.dtype, torch.Generator], dict]
    call: Callable[[Callable, dict, dict], object]               # (fn, shared, coords) -> outputs
    output_shapes: Callable[[int], list[tuple[int, ...]]]        # n -> shapes of the outputs

    def values_per_coordinate(self, mode: str) -> int:
        forward = self.forward_reads + self.forward_writes
        if mode == "forward":
            return forward
        return forward + self.backward_reads + self.backward_writes

    def flop_per_coordinate(self, mode: str) -> int:
        return self.forward_flop * (1 if mode == "forward" else 3)


def _randn(n, device, dtype, gen, scale=1.0, cols=None):
    shape = (n,) if cols is None else (n, cols)
    return torch.randn(shape, generator=gen, device=device, dtype=dtype) * scale


def _gradient_like(n, device, dtype, gen):
    """Gradients spanning many magnitudes, so that both branches of the preprocessing run."""
    exponent = torch.empty(n, device=device, dtype=dtype).uniform_(-7, 1, generator=gen)
    sign = torch.randn(n, generator=gen, device=device, dtype=dtype).sign()
    return sign * torch.pow(10.0, exponent)


def _preprocess_spec() -> OpSpec:
    return OpSpec(
        name="preprocess", shape="p = 10",
        forward_reads=1, forward_writes=2, backward_reads=1 + 2, backward_writes=1,
        # log, /p, e^p*x; the rest are comparisons and selects.
        forward_flop=3,
        shared=lambda device, dtype: {},
        per_coordinate=lambda n, device, dtype, gen: {"x": _gradient_like(n, device, dtype, gen)},
        call=lambda fn, s, c: fn(c["x"]), output_shapes=lambda n: [(n, 2)])


def meta_lstm_forward_flop(hidden: int, inputs: int) -> int:
    """SPEC §2 per coordinate: preprocessing of g (3); layer-1 gates 2*4H*(D+H) + 4H bias;
    3H sigmoids + H tanh; c' (3H); h' = o*tanh(c') (2H); layer 2 two dot products of H+2 plus bias
    (4H + 10); theta' = sigmoid(f)*theta - sigmoid(i)*g (5)."""
    h, d = hidden, inputs
    return 3 + 8 * h * (d + h) + 4 * h + 4 * h + 3 * h + 2 * h + (4 * h + 10) + 5


def _meta_lstm_spec(hidden: int = 20, inputs: int = 4) -> OpSpec:
    def shared(device, dtype):
        torch.manual_seed(0)
        rule = MetaLSTMRule(input_size=inputs, hidden_size=hidden)
        weights = {k: v.detach().to(device, dtype) for k, v in rule.named_parameters()}
        weights["loss"] = torch.tensor(0.7, device=device, dtype=dtype)
        return weights

    def per_coordinate(n, device, dtype, gen):
        return {"theta": _randn(n, device, dtype, gen, 0.1),
                "grad": _gradient_like(n, device, dtype, gen),
                "h": _randn(n, device, dtype, gen, 0.1, hidden),
                "c": _randn(n, device, dtype, gen, 0.1, hidden),
                "f_prev": _randn(n, device, dtype, gen, 1.0),
                "i_prev": _randn(n, device, dtype, gen, 1.0)}

    def call(fn, s, c):
        return fn(c["theta"], c["grad"], s["loss"], c["h"], c["c"], c["f_prev"], c["i_prev"],
                  s["w_ih"], s["w_hh"], s["b_ih"], s["b_hh"], s["w_f"], s["b_f"], s["w_i"], s["b_i"])

    per_coord_in = 4 + 2 * hidden    # theta, grad, f_prev, i_prev, h, c
    per_coord_out = 3 + 2 * hidden   # theta', f, i, h', c'
    return OpSpec(
        name="meta_lstm_step", shape=f"LSTM hidden {hidden}, input {inputs}",
        forward_reads=per_coord_in, forward_writes=per_coord_out,
        backward_reads=per_coord_in + per_coord_out, backward_writes=per_coord_in,
        forward_flop=meta_lstm_forward_flop(hidden, inputs),
        shared=shared, per_coordinate=per_coordinate, call=call,
        output_shapes=lambda n: [(n,), (n, hidden), (n, hidden), (n,), (n,)])


def turtle_forward_flop(sizes: list[int]) -> int:
    """SPEC §3 per coordinate: each Linear 2*in*out + out (bias); momentum (3); theta + alpha*u (2)."""
    return sum(2 * a * b + b for a, b in zip(sizes[:-1], sizes[1:])) + 3 + 2


def _turtle_spec(hidden: int = 20, layers: int = 5, step: int = 1) -> OpSpec:
    sizes = [3] + [hidden] * layers + [1]

    def shared(device, dtype):
        torch.manual_seed(0)
        rule = TurtleRule(hidden_size=hidden, num_hidden_layers=layers)
        return {"weights": [w.detach().to(device, dtype) for w in rule.weights],
                "biases": [b.detach().to(device, dtype) for b in rule.biases]}

    def per_coordinate(n, device, dtype, gen):
        return {"theta": _randn(n, device, dtype, gen, 0.1),
                "grad": _randn(n, device, dtype, gen, 1.0),
                "m": _randn(n, device, dtype, gen, 1.0),
                "alpha": torch.rand(n, generator=gen, device=device, dtype=dtype)}

    # step > 0, so that the moving average (and its gradient) is part of the work.
    def call(fn, s, c):
        return fn(c["theta"], c["grad"], c["m"], step, c["alpha"], s["weights"], s["biases"])

    return OpSpec(
        name="turtle_step", shape="MLP " + "→".join(map(str, sizes)) + f", t = {step}",
        # theta, grad, m, alpha in; theta', m' out. Backward: grad, m, alpha (theta's gradient is
        # the output gradient itself) and the two output gradients in; four input gradients out.
        forward_reads=4, forward_writes=2, backward_reads=3 + 2, backward_writes=4,
        forward_flop=turtle_forward_flop(sizes),
        shared=shared, per_coordinate=per_coordinate, call=call,
        output_shapes=lambda n: [(n,), (n,)])


SPECS = {"preprocess": _preprocess_spec, "meta_lstm_step": _meta_lstm_spec,
         "turtle_step": _turtle_spec}


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (OSError, ValueError):
        return 32 << 20


def rotation_copies(bytes_per_copy: int, cache_bytes: int, most: int = 64) -> int:
    """Enough input copies to cycle through twice the last-level cache, so that a small n is not
    timed on data left in cache by the previous call (capped: tiny n stays partly cached)."""
    return max(1, min(most, math.ceil(2 * cache_bytes / max(bytes_per_copy, 1))))


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


class Implementations:
    """The callables under test; a compiled reference is built once per (op, pass) and a failed
    compilation is remembered so it is reported once, not retried at every size."""

    def __init__(self):
        self.compiled: dict[tuple[str, str], Callable] = {}
        self.compile_error: dict[tuple[str, str], str] = {}

    def get(self, impl: str, op: str, mode: str) -> Callable:
        if impl == "eager":
            return getattr(reference, op)
        if impl == "fused":
            return getattr(ops, op)
        key = (op, mode)
        if key not in self.compiled:
            # dynamic=True: one compilation serves every n (a static one would recompile per size).
            self.compiled[key] = torch.compile(getattr(reference, op), dynamic=True)
        return self.compiled[key]


def skip_reason(impl: str, op: str, device: torch.device, impls: Implementations, mode: str
                ) -> str | None:
    if impl == "fused" and not ops.available(device, op):
        return f"no fused {op} kernel for {device.type} in this build ({ops.describe()})"
    if impl == "compile" and (op, mode) in impls.compile_error:
        return impls.compile_error[(op, mode)]
    return None


@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    budget_s: float
    warmup_s: float
    min_samples: int
    memory_fraction: float  # of the free memory a size may be predicted to use


class OpBenchmark:
    """Runs every (op, size, pass, implementation) and returns one row for each, measured or with
    the reason it was not."""

    def __init__(self, settings: Settings, log=print):
        self.s, self.log = settings, log
        self.impls = Implementations()
        self.cache = last_level_cache_bytes(settings.device)
        # Inputs are drawn on the device: at 10^8 coordinates a host-side draw would take minutes.
        self.gen = torch.Generator(device=settings.device).manual_seed(0)

    def run(self, op_names: list[str], sizes: list[int], impl_names: list[str], modes: list[str],
            on_progress: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Size by size, every op at each size, in the order ``sizes`` gives (put the sizes that
        matter most first). ``on_progress(rows)`` runs after each (size, op), so that a run stopped
        by a time limit still leaves everything it finished on disk."""
        rows: list[dict] = []
        # Fused and eager first: if a time limit cuts the run short, compilation is what is lost.
        order = [i for i in ("fused", "eager", "compile") if i in impl_names]
        specs = {op: SPECS[op]() for op in op_names}
        shared = {op: spec.shared(self.s.device, self.s.dtype) for op, spec in specs.items()}
        # Peak bytes per coordinate of each (pass, impl) at the sizes measured so far, per op, to
        # refuse a size that cannot fit before trying it.
        peak_per_coord: dict[str, dict[tuple[str, str], float]] = {op: {} for op in op_names}
        for n in sizes:
            for op in op_names:
                rows += self._size(specs[op], shared[op], n, order, modes, peak_per_coord[op])
                _release(self.s.device)
                if on_progress:
                    on_progress(rows)
        torch._dynamo.reset()
        return rows

    def _size(self, spec: OpSpec, shared: dict, n: int, impl_order: list[str], modes: list[str],
              peak_per_coord: dict) -> list[dict]:
        s, op = self.s, spec.name
        element = torch.finfo(s.dtype).bits // 8
        per_copy = (_nbytes(spec.per_coordinate(1, s.device, s.dtype, self.gen))
                    + spec.forward_writes * element) * n  # inputs + output gradients
        n_copies = rotation_copies(per_copy, self.cache)
        room = memory.available_bytes(s.device)
        if room is not None and n_copies * per_copy > s.memory_fraction * room:
            why = (f"inputs need {results.mebibytes(n_copies * per_copy)}, more than "
                   f"{s.memory_fraction:.0%} of the {results.mebibytes(room)} available")
            return [_skipped(op, m, i, n, "skipped", why) for m in modes for i in impl_order]
        copies = [spec.per_coordinate(n, s.device, s.dtype, self.gen) for _ in range(n_copies)]
        rows = []
        for mode in modes:
            backward = mode != "forward"
            for t in _tensors(shared) + _tensors(copies):
                t.requires_grad_(backward)
            grad_outputs = [[torch.randn(shape, generator=self.gen, device=s.device, dtype=s.dtype)
                             for shape in spec.output_shapes(n)] for _ in copies] if backward else []
            for impl in impl_order:
                row = self._one(spec, impl, mode, n, shared, copies, grad_outputs, peak_per_coord)
                row.update(copies=n_copies, bytes_per_coordinate=spec.values_per_coordinate(mode)
                           * element, flop_per_coordinate=spec.flop_per_coordinate(mode))
                rows.append(row)
                if row["status"] == "ok" and row["peak_bytes"] is not None:
                    peak_per_coord[(mode, impl)] = max(row["peak_bytes"], per_copy) / n
        return rows

    def _one(self, spec, impl, mode, n, shared, copies, grad_outputs, peak_per_coord) -> dict:
        s, op = self.s, spec.name
        reason = skip_reason(impl, op, s.device, self.impls, mode)
        if reason:
            return _skipped(op, mode, impl, n, "skipped", reason)
        room = memory.available_bytes(s.device)
        per_coord = peak_per_coord.get((mode, impl))
        if per_coord is not None and room is not None and per_coord * n * 1.25 > s.memory_fraction * room:
            return _skipped(op, mode, impl, n, "skipped",
                            f"one call would need about {results.mebibytes(int(per_coord * n * 1.25))}"
                            f" (scaled from the previous size), more than {s.memory_fraction:.0%} "
                            f"of the {results.mebibytes(room)} available")
        label = f"{op} {mode} {impl} n={n}"
        try:
            with ops.use_backend("fused" if impl == "fused" else "reference"):
                timing, peak = time_call(spec, mode, self.impls.get(impl, op, mode), shared,
                                         copies, grad_outputs, s)
        except torch.OutOfMemoryError:
            _release(s.device)
            return _skipped(op, mode, impl, n, "skipped", "out of device memory")
        except Exception as exc:  # one failing case must not lose the others
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {first[:300]}"
            if impl == "compile":
                reason = self.impls.compile_error[(op, mode)] = f"torch.compile failed: {reason}"
            self.log(f"  {label}: {reason}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            _release(s.device)
            return _skipped(op, mode, impl, n, "error", reason)
        self.log(f"  {label}: {results.spread(timing.as_dict())} "
                 f"({timing.samples} samples x {timing.calls_per_sample})")
        return {"op": op, "mode": mode, "impl": impl, "n": n, "status": "ok",
                "what": f"{op} {mode} {impl}", "timing": timing.as_dict(), "peak_bytes": peak}


def time_call(spec: OpSpec, mode: str, fn: Callable, shared: dict, copies: list[dict],
              grad_outputs: list[list[torch.Tensor]], s: Settings):
    """Time one (op, implementation, pass) at one size; returns (Timing, peak bytes of one call).
    Call i uses input copy i mod len(copies); the backward takes the gradient of every input."""
    backward = mode != "forward"
    leaves = [_tensors(shared) + _tensors(c) for c in copies]

    def call(i):
        k = i % len(copies)
        out = spec.call(fn, shared, copies[k])
        if backward:
            outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            torch.autograd.grad(outs, leaves[k], grad_outputs[k], allow_unused=True)

    call(0)  # first call: compilation and lazy initialisation, kept out of the memory peak
    with memory.PeakMemory(s.device) as peak:
        call(1)
    # The two calls above already warmed up, so one more suffices before the samples.
    timing = measure(call, s.device, budget_s=s.budget_s, warmup_s=s.warmup_s,
                     min_samples=s.min_samples, warmup_calls=1)
    return timing, peak.bytes


def _skipped(op, mode, impl, n, status, reason) -> dict:
    return {"op": op, "mode": mode, "impl": impl, "n": n, "status": status,
            "what": f"{op} {mode} {impl}", "reason": reason}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_derived(rows: list[dict], ceilings: dict) -> None:
    """Coordinates per second, speed-ups over eager and compile, and the roofline fraction."""
    medians = {(r["op"], r["mode"], r["n"], r["impl"]): r["timing"]["median_s"]
               for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        t = r["timing"]["median_s"]
        r["coordinates_per_s"] = r["n"] / t
        for base in ("eager", "compile"):
            other = medians.get((r["op"], r["mode"], r["n"], base))
            r[f"speedup_vs_{base}"] = None if other is None else other / t
        memory_time = r["bytes_per_coordinate"] * r["n"] / ceilings["bandwidth_bytes_per_s"]
        compute_time = r["flop_per_coordinate"] * r["n"] / ceilings["fp32_flop_per_s"]
        r["bound"] = "memory" if memory_time >= compute_time else "compute"
        r["roofline_fraction"] = max(memory_time, compute_time) / t


def render_markdown(record: dict) -> str:
    """One row per (op, pass, n): the three implementations side by side, then the fused kernel's
    speed-ups, throughput and roofline fraction."""
    ok = {(r["op"], r["mode"], r["n"], r["impl"]): r for r in record["results"] if r["status"] == "ok"}
    keys = sorted({(r["op"], r["mode"], r["n"]) for r in record["results"]},
                  key=lambda k: (OP_NAMES.index(k[0]) if k[0] in OP_NAMES else 99,
                                 MODES.index(k[1]) if k[1] in MODES else 99, k[2]))
    rows = []
    for op, mode, n in keys:
        cells = [f"`{op}`", mode, f"10^{round(math.log10(n))}" if _power_of_ten(n) else str(n)]
        for impl in IMPLS:
            r = ok.get((op, mode, n, impl))
            cells.append(results.spread(r["timing"]) if r else "–")
        fused = ok.get((op, mode, n, "fused"))
        if fused:
            cells += [results.ratio(fused.get("speedup_vs_eager")),
                      results.ratio(fused.get("speedup_vs_compile")),
                      results.count(fused["coordinates_per_s"]),
                      f"{100 * fused['roofline_fraction']:.1f}% ({fused['bound']})"]
        else:
            cells += ["–"] * 4
        rows.append(cells)
    c = record["ceilings"]
    s = record["settings"]
    head = (f"**Ops, {record['device'].upper()}, {s['dtype']}** — time per call (median ± half the "
            f"interquartile range); the speed-ups, throughput and roofline columns are the fused "
            f"kernel's. Ceilings measured in the same run: "
            f"{c['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, {c['fp32_flop_per_s'] / 1e9:.1f} GFLOP/s FP32. "
            f"Shapes: " + "; ".join(f"`{k}` {v}" for k, v in s["shapes"].items()) + ".")
    table = results.table(["op", "pass", "n", "eager", "compile", "fused", "fused vs eager",
                           "fused vs compile", "fused coords/s", "fused roofline"], rows)
    return head + "\n\n" + table


def _power_of_ten(n: int) -> bool:
    return n > 0 and 10 ** round(math.log10(n)) == n


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time preprocess, meta_lstm_step and turtle_step: eager reference, "
                    "torch.compile(reference) and the fused kernel, forward and forward+backward.",
        epilog="Example: python3 -m bench.ops --quick   (writes bench/results/ops-cpu-*.json)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="10^3..10^6 coordinates and short budgets: a few minutes on 2 cores")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                        help="comma-separated n, e.g. 1e3,1e5 (default: decades from 10^3 to "
                             "10^7 on CPU, 10^8 on CUDA, 10^6 with --quick)")
    parser.add_argument("--ops", default=",".join(OP_NAMES), help="comma-separated subset of ops")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of "
                                                                  "eager,compile,fused")
    parser.add_argument("--modes", default="forward,backward",
                        help="comma-separated subset of forward,backward (backward = forward+backward)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--budget", type=float, help="seconds of samples per measurement "
                                                     "(default 1.0, 0.2 with --quick)")
    parser.add_argument("--threads", type=int,
                        help="torch/OpenMP threads on the CPU (default: every core this process may use)")
    parser.add_argument("--memory-fraction", type=float, default=0.6,
                        help="skip a size whose predicted memory exceeds this share of what is free")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/ops-<device>-<date>.json)")
    parser.add_argument("--label", help="a word saved with the result and in its file name, e.g. smoke")
    args = parser.parse_args(argv)
    args.ops = _subset(parser, "--ops", args.ops, OP_NAMES)
    args.impls = _subset(parser, "--impls", args.impls, IMPLS)
    modes = _subset(parser, "--modes", args.modes, ("forward", "backward"))
    args.modes = [MODES[0] if m == "forward" else MODES[1] for m in modes]
    return args


def _subset(parser, flag, text, allowed):
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: {unknown or 'nothing'} not among {', '.join(allowed)}")
    return chosen


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = machine.setup_device(args.device, args.threads)
    dtype = getattr(torch, args.dtype)
    top = 6 if args.quick else (8 if device.type == "cuda" else 7)
    sizes = args.sizes or [10 ** k for k in range(3, top + 1)]
    budget = args.budget or (0.2 if args.quick else 1.0)
    warmup = 0.05 if args.quick else 0.2
    min_samples = 3 if args.quick else 5

    record = machine.run_header("ops", device, argv)
    record["label"] = args.label
    print(f"# bench.ops on {device} — {record['machine']['gpu_model'] or record['machine']['cpu_model']}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {record['date']}")
    print(f"# command: {record['command']}\n# {ops.describe()}")
    record["ceilings"] = machine.measure_ceilings(device, args.quick)
    record["settings"] = {
        "sizes": sizes, "dtype": args.dtype, "budget_s": budget, "warmup_s": warmup,
        "min_samples": min_samples,
        "quick": args.quick, "ops": args.ops, "impls": args.impls, "modes": args.modes,
        "shapes": {op: SPECS[op]().shape for op in args.ops},
        "compile": "torch.compile(reference.<op>, dynamic=True), default inductor backend",
        "fused": "learnedopt.ops.<op> with set_backend('fused') (the public path: the wrapper's "
                 "argument checks are part of the time)",
        "timing": "samples of back-to-back calls closed by a device sync; inputs rotated over "
                  "copies cycling through 2x the last-level cache (at most 64 copies)",
        "memory": memory.METHOD[device.type],
        "bytes_rule": BYTES_RULE, "flop_rule": FLOP_RULE,
    }
    path = args.out or results.default_path(record, args.label)

    def save(rows, complete=False):
        add_derived(rows, record["ceilings"])
        record["results"], record["complete"] = rows, complete
        results.write_json(record, path)

    settings = Settings(device, dtype, budget, warmup, min_samples, args.memory_fraction)
    rows = OpBenchmark(settings).run(args.ops, sizes, args.impls, args.modes, on_progress=save)
    save(rows, complete=True)
    print("\n" + results.render(record) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
