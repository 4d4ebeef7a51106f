"""Renders the 2D-navigation result JSONs (from `learnedopt eval --out`) as the README's meta-RL
table — the average return after 0, 1, 2 and 3 inner steps, mean ± 95% CI — and the comparison
of Meta-SGD with MAML after one step; with --readme, writes them between
`<!-- results:navigation2d:start -->` and `<!-- results:navigation2d:end -->`.

    python scripts/navigation2d_table.py results/navigation2d --readme README.md
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from results_table import backend, write_section

from learnedopt.evaluate import load_result
from learnedopt.rl.plots import describe, returns_by_step


def cell(summary: dict) -> str:
    ci = summary["ci95"]
    return f"{summary['mean']:.2f} ± {ci:.2f}" if ci is not None else f"{summary['mean']:.2f}"


def table(results: list[dict], steps: list[int]) -> str:
    header = ("| policy | " + " | ".join(f"after {k} step{'s' if k != 1 else ''}" for k in steps)
              + " | test goals | meta-iterations (best / configured) | outer update | backend |")
    lines = [header, "|" + "---|" * (len(steps) + 5)]
    for result in results:
        by_step = dict(returns_by_step(result))
        p, o = result["protocol"], result["options"]
        outer = o.get("outer_optimizer", "—")
        if outer == "trpo":
            outer = f"TRPO (max KL {o['max_kl']:g}, {o.get('fisher', 'exact').replace('_', '-')} Fisher)"
        elif outer == "adam":
            outer = f"Adam ({o['outer_lr']:g})"
        cells = [cell(by_step[k]) if k in by_step else "—" for k in steps]
        lines.append(f"| {describe(result)} | " + " | ".join(cells) +
                     f" | {p['tasks']} | {p['iterations']} / {p['run_iterations']} | {outer} | "
                     f"{backend(result['backend'])} |")
    return "\n".join(lines)


def comparison(results: list[dict], step: int = 1) -> str:
    """Which of Meta-SGD and MAML is ahead after ``step`` steps, by how much (95% CI of the
    difference from the two CIs, as if independent: conservative, since both saw the same goals
    and noise)."""
    by_name = {describe(r): dict(returns_by_step(r)).get(step) for r in results}
    maml, metasgd = by_name.get("maml"), by_name.get("metasgd")
    if maml is None or metasgd is None:
        return ""
    diff = metasgd["mean"] - maml["mean"]
    ci = math.hypot(maml["ci95"] or 0.0, metasgd["ci95"] or 0.0)
    ahead, behind = ("Meta-SGD", "MAML") if diff > 0 else ("MAML", "Meta-SGD")
    verdict = "a clear difference" if abs(diff) > ci else "within the noise of this comparison"
    return (f"After {step} inner step, {ahead} is ahead of {behind} by {abs(diff):.2f} ± {ci:.2f} "
            f"in average return (95% CI of the difference, unpaired): {verdict}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of navigation2d result JSON files")
    parser.add_argument("--readme", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    results = [load_result(f) for f in sorted(args.folder.glob("*.json"))]
    if not results:
        print(f"no result files in {args.folder}", file=sys.stderr)
        return 1
    steps = sorted({k for r in results for k, _ in returns_by_step(r)})
    results.sort(key=lambda r: -dict(returns_by_step(r)).get(1, {"mean": -math.inf})["mean"])
    text = table(results, steps)
    sentence = comparison(results)
    if sentence:
        text += "\n\n" + sentence
    print(text)
    return write_section(args.readme, "navigation2d", text) if args.readme else 0


if __name__ == "__main__":
    sys.exit(main())
