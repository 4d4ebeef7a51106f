"""Figures as PNG files (matplotlib is an optional dependency: ``pip install learnedopt[plot]``).

- :func:`plot_curves`: meta-training curves from one or more runs' metrics.jsonl.
- :func:`plot_gates`: the meta-learner LSTM's input and forget gate values over the inner steps
  (Ravi & Larochelle 2017, Fig. 3), from ``algorithm.gate_trace(batch)``.
- :func:`plot_sine_fit`: a sine task's fit before and after adaptation, from
  ``algorithm.predict_adapted(batch, x_grid, steps)``.
- :func:`plot_ways`: meta-test accuracy against the number of ways, from result JSON files.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch

from learnedopt import experiment
from learnedopt.checkpoint import load_checkpoint
from learnedopt.evaluate import load_result, rebuild_algorithm
from learnedopt.train import load_metrics


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib, which is not installed: "
                           "pip install matplotlib (or pip install 'learnedopt[plot]')") from None
    matplotlib.use("Agg")  # files only: no display needed, works on headless machines
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def plot_curves(runs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Training meta-loss (left) and the validation metric with its 95% CI band (right) per run."""
    plt = _pyplot()
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    val_metric, all_positive = None, True
    for run in runs:
        records = load_metrics(run)
        run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
        label = run_dir.name
        if (run_dir / "config.json").is_file():
            label = f"{json.loads((run_dir / 'config.json').read_text())['algorithm']} ({label})"
        train = [r for r in records if r.get("split") == "train"]
        val = [r for r in records if r.get("split") == "val"]
        all_positive &= all(r["meta_loss"] > 0 for r in train)
        if train:
            ax_train.plot([r["iteration"] for r in train], [r["meta_loss"] for r in train], label=label)
        if val:
            val_metric = next(m for m in ("accuracy", "return", "loss") if m in val[0])
            it = [r["iteration"] for r in val]
            mean = torch.tensor([r[val_metric] for r in val])
            ci = torch.tensor([r.get(f"{val_metric}_ci95") or 0.0 for r in val])
            line, = ax_val.plot(it, mean, marker="o", markersize=3, label=label)
            ax_val.fill_between(it, mean - ci, mean + ci, alpha=0.2, color=line.get_color())
        if not train and not val:
            raise ValueError(f"{str(run)!r}: the metrics log holds no train or val records yet")
    ax_train.set(xlabel="meta-iteration", ylabel="meta-training loss", title="meta-training")
    ax_val.set(xlabel="meta-iteration", ylabel=f"validation {val_metric or ''}",
               title="validation (mean ± 95% CI)")
    if all_positive:  # MSE / cross-entropy span decades; TAML-style penalties can go negative
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
        ax_train.set_yscale("log")
        ax_train.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_train.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax_train.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    return _save(fig, out)


def plot_gates(checkpoint_path: str | os.PathLike, out: str | os.PathLike, split: str = "test",
               seed: int = 0, device: str = "cpu", data_root: str | None = None) -> Path:
    """Input gate σ(i_t) (the learned learning rate) and forget gate σ(f_t) per inner step on one
    meta-test task: a thin line per sampled coordinate and the mean over all coordinates
    (Ravi & Larochelle 2017, Fig. 3). Reads ``algorithm.gate_trace(batch)``: "input_gate" and
    "forget_gate" (tasks, steps, coordinates), "input_gate_mean" and "forget_gate_mean"
    (tasks, steps)."""
    plt = _pyplot()
    checkpoint = load_checkpoint(checkpoint_path)
    algorithm = rebuild_algorithm(checkpoint, device)
    if not hasattr(algorithm, "gate_trace"):
        raise ValueError(f"algorithm {checkpoint['algorithm']!r} has no gates to plot (only the "
                         f"meta-learner LSTM family exposes gate_trace)")
    sampler = _sampler(checkpoint, device, data_root)
    batch = next(iter(sampler.fixed_tasks(split, 1, 1, seed)))
    algorithm.eval()
    trace = algorithm.gate_trace(batch)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, gate in zip(axes, ("input", "forget")):
        try:
            values = trace[f"{gate}_gate"][0].detach().cpu()
            mean = trace[f"{gate}_gate_mean"][0].detach().cpu()
        except KeyError as exc:
            raise KeyError(f"gate_trace() returned {sorted(trace)}, without {exc.args[0]!r}") from None
        steps = torch.arange(1, values.shape[0] + 1)
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(steps, mean, color="black", linewidth=2, marker="o", markersize=3,
                label="mean over all coordinates")
        ax.set(xlabel="inner step", ylabel=f"{gate} gate value", title=f"{gate} gate",
               xticks=steps.tolist())
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(f"{checkpoint['algorithm']}: gate values on a meta-test task "
                 f"({values.shape[1]} sampled coordinates)")
    return _save(fig, out)


def _sampler(checkpoint: dict[str, Any], device: str, data_root: str | None):
    spec = dict(checkpoint["task"])
    if data_root is not None:
        spec["data_root"] = data_root
    return experiment.build_sampler(spec, device)


def _sine_from_points(x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The sine through noise-free samples: A sin(x − φ) = a sin x + b cos x is linear in (a, b),
    so least squares over the task's points recovers the true curve exactly."""
    design = torch.stack([torch.sin(x), torch.cos(x)], dim=1).double()
    coef = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.squeeze(1)
    return coef[0] * torch.sin(grid.double()) + coef[1] * torch.cos(grid.double())


def plot_sine_fit(checkpoint_path: str | os.PathLike, out: str | os.PathLike, tasks: int = 4,
                  steps: int | None = None, seed: int = 0, device: str = "cpu") -> Path:
    """For a few meta-test sine tasks: the true curve, the support points, and the learner's
    prediction before (θ_0) and after adapting to the support set."""
    plt = _pyplot()
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint.get("task", {}).get("name") != "sine":
        raise ValueError(f"sine-fit plots need a sine checkpoint; {str(checkpoint_path)!r} was "
                         f"trained on {checkpoint.get('task', {}).get('name')!r}")
    algorithm = rebuild_algorithm(checkpoint, device)
    if not hasattr(algorithm, "predict_adapted"):
        raise ValueError(f"algorithm {checkpoint['algorithm']!r} does not expose predict_adapted")
    sampler = _sampler(checkpoint, device, None)
    batch = next(iter(sampler.fixed_tasks("test", tasks, tasks, seed)))
    lo, hi = sampler.x_range
    grid = torch.linspace(lo, hi, 200, device=sampler.device)
    algorithm.eval()
    before, after = algorithm.predict_adapted(batch, grid.unsqueeze(1), steps)
    before, after = before.detach().cpu(), after.detach().cpu()
    cols = min(tasks, 4)
    rows = -(-tasks // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3 * rows), squeeze=False)
    grid = grid.cpu()
    for b, ax in enumerate(axes.flat):
        if b >= batch.num_tasks:
            ax.axis("off")
            continue
        task = batch.task(b).to("cpu")
        x_all = torch.cat([task.x_support, task.x_query], 1).reshape(-1)
        y_all = torch.cat([task.y_support, task.y_query], 1).reshape(-1)
        ax.plot(grid, _sine_from_points(x_all, y_all, grid), color="black", label="true")
        ax.plot(grid, before[b].reshape(-1), "--", color="tab:gray", label="before adaptation")
        ax.plot(grid, after[b].reshape(-1), color="tab:red", label="after adaptation")
        ax.scatter(task.x_support.reshape(-1), task.y_support.reshape(-1), color="tab:blue",
                   zorder=3, s=18, label=f"{task.x_support.shape[1]} support points")
        ax.grid(alpha=0.3)
        ax.set(xlabel="x (input)", ylabel="y (output)")
        if b == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{checkpoint['algorithm']}: sine fits on meta-test tasks")
    return _save(fig, out)


def result_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The result JSON files named by ``paths``: files as given, directories searched recursively
    for ``*.json``, and glob patterns (``results/**/*.json``, quoted so that the shell leaves them)
    expanded recursively. A path that matches nothing is an error, not silently skipped."""
    import glob
    files: list[Path] = []
    for path in paths:
        text = str(path)
        if Path(text).is_dir():
            found = sorted(p for p in Path(text).rglob("*.json") if p.is_file())
            if not found:
                raise ValueError(f"{text!r} is a directory without result files (*.json)")
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise ValueError(f"{text!r} matches no files")
        else:
            found = [Path(text)]  # load_result names it if it does not exist
        files += [f for f in found if f not in files]
    return files


def plot_ways(results: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Meta-test accuracy (mean ± 95% CI) against the number of ways, one line per algorithm
    (and shot count, when the results hold several), ticks at the tested ways: the stress test's
    figure. ``results``: result files, directories of them, or glob patterns."""
    plt = _pyplot()
    lines: dict[tuple[str, Any], dict[int, tuple[float, float, str]]] = defaultdict(dict)
    for path in result_files(results):
        result = load_result(path)
        ways = result["protocol"].get("ways")
        if ways is None or result.get("metric") != "accuracy":
            raise ValueError(f"{str(path)!r} is not a classification result (no ways and accuracy "
                             f"recorded)")
        key = (result["algorithm"], result["protocol"].get("shots"))
        if int(ways) in lines[key]:
            raise ValueError(f"two results for {key[0]} {key[1]}-shot at {ways} ways: "
                             f"{lines[key][int(ways)][2]!r} and {str(path)!r}; plot one of them")
        lines[key][int(ways)] = (result["mean"], result["ci95"] or 0.0, str(path))
    several_shots = len({shots for _, shots in lines}) > 1
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    tested = sorted({w for points in lines.values() for w in points})
    for (algorithm, shots), points in sorted(lines.items(), key=lambda kv: (str(kv[0][0]),
                                                                          str(kv[0][1]))):
        ways = sorted(points)
        label = f"{algorithm} {shots}-shot" if several_shots else algorithm
        ax.errorbar(ways, [points[w][0] * 100 for w in ways],
                    yerr=[points[w][1] * 100 for w in ways], marker="o", capsize=4, label=label)
    shots_text = "" if several_shots else f", {next(iter(lines))[1]}-shot"
    ax.set(xlabel="ways (classes per task)", ylabel="meta-test accuracy (%)",
           title=f"accuracy against number of ways{shots_text} (mean ± 95% CI)")
    # A linear axis, as the stress test's Figure 2 (a log one crowds 150, 175, 200 together).
    ax.set_xticks(tested)
    ax.set_xticklabels([str(w) for w in tested])
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)
