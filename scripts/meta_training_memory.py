"""Does meta-training's memory stay flat over many inner steps with each fused rule?

Meta-trains on 5-shot sine, in this process, with learnedopt.train.train (the real loop: task
sampling, the fused kernels forward and backward, the outer Adam, logging, checkpoints):

- ``metalstm`` first-order (the fused meta_lstm_step),
- ``turtle`` second-order (the fused turtle_step, differentiated through its backward),

each for ``--inner-steps-total`` inner steps (meta-iterations x inner steps per task), and samples
at every log record (every ``--log-every`` iterations) the process's resident set size (VmRSS)
and the numbers of Python objects and live tensors the garbage collector tracks, as
scripts/optimizer_memory.py does for the drop-in optimizers.

After the first ``--warmup`` fraction of the iterations (allocator pools, caches, the first
checkpoint write, at 1/20 of the iterations) a rule passes when the peak RSS grows by less than
``--max-growth`` of the RSS at the end of warm-up, the tensor count does not grow and the Python
object count by at most OBJECT_NOISE (2: a transient object caught alive by a sample). (The metrics records the run keeps, one per log record, are growth by design, reported as
metrics_records_growth.)

    python3 scripts/meta_training_memory.py --out results/reliability/meta_training_memory.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import run_header  # noqa: E402
from bench.memory import python_counts, rss_bytes  # noqa: E402
from bench.results import write_json  # noqa: E402
from learnedopt import train as train_module  # noqa: E402
from learnedopt.train import TrainConfig, train  # noqa: E402

# A sample can catch a transient object or two alive (the count moves by +-1 between samples of a
# flat run); a leak of one object per iteration would show as thousands.
OBJECT_NOISE = 2
RULES = {"metalstm-fo": ("metalstm", True), "turtle-so": ("turtle", False)}


def measure(name: str, inner_steps_total: int, inner_steps: int, meta_batch: int, log_every: int,
            warmup: float, workdir: Path) -> dict:
    algorithm, first_order = RULES[name]
    iterations = inner_steps_total // inner_steps
    samples = []
    real_flush = train_module._Trainer._flush_window

    def sampled_flush(self):  # the script's probe: one sample per log record
        record = real_flush(self)
        objects, tensors = python_counts()
        samples.append({"iteration": self.iteration, "rss_bytes": rss_bytes(),
                        "python_objects": objects, "tensors": tensors,
                        "metrics_records": len(self.records)})
        return record

    config = TrainConfig(algorithm=algorithm, task={"name": "sine", "shots": 5, "queries": 5},
                         out=str(workdir / name), iterations=iterations,
                         val_every=iterations + 1, val_tasks=10, log_every=log_every,
                         # The first checkpoint write falls inside warm-up (torch.save sets
                         # up its machinery once: a one-time jump in Python objects).
                         checkpoint_every=max(1, iterations // 20), seed=0, progress=False,
                         options={"inner_steps": inner_steps, "meta_batch_size": meta_batch,
                                  "first_order": first_order})
    train_module._Trainer._flush_window = sampled_flush
    began = time.perf_counter()
    try:
        train(config)
    finally:
        train_module._Trainer._flush_window = real_flush
    seconds = time.perf_counter() - began
    warm = next(s for s in samples if s["iteration"] >= warmup * iterations)
    after = [s for s in samples if s["iteration"] >= warm["iteration"]]
    peak = max(s["rss_bytes"] for s in after)
    return {"rule": name, "algorithm": algorithm, "first_order": first_order,
            "iterations": iterations, "inner_steps_per_iteration": inner_steps,
            "inner_steps_total": iterations * inner_steps, "meta_batch": meta_batch,
            "warmup_iterations": warm["iteration"], "seconds": round(seconds, 2),
            "rss_after_warmup_bytes": warm["rss_bytes"], "rss_final_bytes": after[-1]["rss_bytes"],
            "rss_peak_after_warmup_bytes": peak,
            "rss_growth_fraction": (peak - warm["rss_bytes"]) / warm["rss_bytes"],
            "python_objects_growth": after[-1]["python_objects"] - warm["python_objects"],
            "tensors_growth": after[-1]["tensors"] - warm["tensors"],
            # The run keeps every metrics record (they go into each checkpoint): growth by
            # design, bounded by iterations / log_every; dicts of plain numbers are not tracked
            # by the garbage collector, so they do not show in python_objects.
            "metrics_records_growth": after[-1]["metrics_records"] - warm["metrics_records"],
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inner-steps-total", type=int, default=10_000)
    parser.add_argument("--inner-steps", type=int, default=5, help="inner steps per task")
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="fraction of the iterations counted as warm-up (default 0.1)")
    parser.add_argument("--max-growth", type=float, default=0.01)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: no per-thread allocator arenas appearing mid-run
    record = run_header("meta_training_memory", torch.device("cpu"), argv)
    record["command"] = " ".join(["python3", "scripts/meta_training_memory.py",
                                  *(sys.argv[1:] if argv is None else argv)])
    record.update(schema="learnedopt-reliability/1", max_growth=args.max_growth,
                  python_object_noise=OBJECT_NOISE, results=[])
    ok = True
    with tempfile.TemporaryDirectory(prefix="meta-memory-") as tmp:
        for name in args.rules:
            result = measure(name, args.inner_steps_total, args.inner_steps, args.meta_batch,
                             args.log_every, args.warmup, Path(tmp))
            result["passed"] = (result["rss_growth_fraction"] < args.max_growth
                                and result["python_objects_growth"] <= OBJECT_NOISE
                                and result["tensors_growth"] <= 0)
            ok &= result["passed"]
            record["results"].append(result)
            print(f"{name}: {result['inner_steps_total']} inner steps ({result['iterations']} "
                  f"meta-iterations) in {result['seconds']} s; RSS after warm-up "
                  f"{result['rss_after_warmup_bytes'] / 2**20:.1f} MiB, peak after warm-up "
                  f"+{100 * result['rss_growth_fraction']:.3f} %; Python objects "
                  f"{result['python_objects_growth']:+d}, tensors {result['tensors_growth']:+d}: "
                  f"{'flat' if result['passed'] else 'GROWS'}", flush=True)
    record["passed"] = ok
    if args.out:
        write_json(record, args.out)
        print(f"written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
