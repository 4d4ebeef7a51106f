"""Meta-RL figures (PNG; matplotlib, as learnedopt.plots):

- :func:`plot_returns`: the average return against the number of inner steps, one line (mean ±
  95% CI band) per result file (MAML's Figure 4, top);
- :func:`plot_trajectories`: one sampled trajectory per goal before and after adaptation, one
  panel per checkpoint (the Meta-SGD paper's Figure 4; MAML's Figure 4, bottom).

:func:`describe` names a navigation result the way the tables and legends do: the algorithm, or
"random" (no outer update) and "pretrained" (trained without inner steps) for MAML's baselines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from learnedopt import experiment
from learnedopt.checkpoint import load_checkpoint
from learnedopt.evaluate import load_result, rebuild_algorithm
from learnedopt.plots import _pyplot, _save

STEP_KEY = re.compile(r"^return_after_(\d+)$")


def describe(result_or_checkpoint: dict[str, Any]) -> str:
    """"random", "pretrained", or the algorithm's name (with its outer optimizer when not TRPO)."""
    options = result_or_checkpoint.get("options", {})
    if options.get("outer_optimizer") == "none":
        return "random"
    if options.get("inner_steps") == 0:
        return "pretrained"
    name = result_or_checkpoint["algorithm"]
    outer = options.get("outer_optimizer", "trpo")
    return name if outer == "trpo" else f"{name} ({outer})"


def returns_by_step(result: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """[(k, summary of the return after k inner steps)], k ascending, from a result record."""
    steps = [(int(m.group(1)), summary) for key, summary in result["metrics"].items()
             if (m := STEP_KEY.match(key))]
    if not steps:
        raise ValueError(f"{result.get('checkpoint')!r}: the result holds no return_after_k "
                         f"metrics (not a navigation2d result)")
    return sorted(steps, key=lambda item: item[0])


def plot_returns(results: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for path in results:
        result = load_result(path)
        points = returns_by_step(result)
        steps = [k for k, _ in points]
        mean = torch.tensor([s["mean"] for _, s in points])
        ci = torch.tensor([s["ci95"] or 0.0 for _, s in points])
        line, = ax.plot(steps, mean, marker="o", label=describe(result))
        ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2, color=line.get_color())
    ax.set(xlabel="number of inner (policy-gradient) steps", ylabel="average return",
           title="2D navigation: return after adaptation (mean ± 95% CI)")
    ax.set_xticks(sorted({k for path in results for k, _ in returns_by_step(load_result(path))}))
    ax.legend()
    return _save(fig, out)


def plot_trajectories(checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike,
                      goals: int = 4, steps: int = 1, seed: int = 0) -> Path:
    """For the first ``goals`` fixed test goals of ``seed``: each checkpoint's first sampled
    trajectory there before adaptation (dashed) and after ``steps`` inner steps (solid)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.2 * len(checkpoints), 4.2),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, path in zip(axes[0], checkpoints):
        checkpoint = load_checkpoint(path)
        sampler = experiment.build_sampler(checkpoint["task"])
        algorithm = rebuild_algorithm(checkpoint).eval()
        batch = next(iter(sampler.fixed_tasks("test", goals, goals, seed)))
        before, after = algorithm.sample_adapted(batch, 0), algorithm.sample_adapted(batch, steps)
        for b in range(batch.num_tasks):
            colour = colours[b % len(colours)]
            for traj, style in ((before, "--"), (after, "-")):
                # The positions: the start, then the clipped velocities summed, up to the end.
                length = int(traj.mask[b, 0].sum())
                bound = batch.env.action_bound
                moves = traj.actions[b, 0, :length].detach().cpu().clamp(-bound, bound)
                path_xy = torch.cat([torch.zeros(1, 2, dtype=moves.dtype), moves.cumsum(0)])
                ax.plot(path_xy[:, 0], path_xy[:, 1], style, color=colour, linewidth=1.2)
            ax.plot(*batch.goals[b].cpu().tolist(), marker="*", markersize=14, color=colour,
                    markeredgecolor="black")
        ax.plot([], [], "k--", label="before adaptation")
        ax.plot([], [], "k-", label=f"after {steps} step{'s' if steps != 1 else ''}")
        ax.plot([], [], "k*", label="goal")
        ax.set(title=describe(checkpoint), xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8,
                  frameon=False)
    return _save(fig, out)
