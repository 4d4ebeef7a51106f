"""Renders the Omniglot protocol results beside the MetaLSTM++ stress test's published numbers:
Table 1 (20-way 1-/5-shot) from results/omniglot20/BUDGET/ and accuracy against ways from
results/stress-test/BUDGET/, written between the README markers
``<!-- results:omniglot20-BUDGET:start/end -->`` and ``<!-- results:stress-test-BUDGET:start/end -->``;
and the cost of the full protocol from results/stress-test/protocol_cost.json
(``bench/protocol_cost.py``) between ``<!-- results:protocol-cost:start/end -->``.

    python scripts/stress_test_table.py --budget cpu --readme README.md

The papers' numbers are typed in once here, from shared/seeds/metalstm_plusplus_stress_test.txt
(Table 1; Figure 2 gives no numbers in the text, only what its curves do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import write_section  # noqa: E402

from learnedopt.evaluate import load_result  # noqa: E402

ALGORITHMS = ("maml", "metasgd", "taml", "metalstm", "metalstm++")
# Table 1 of the stress test: 20-way accuracy (%) ± 95% CI over 300 tasks, (1-shot, 5-shot).
PAPER_TABLE1 = {"maml": ("91.93 ± 0.72", "97.65 ± 0.20"), "metasgd": ("94.58 ± 0.59", "97.79 ± 0.23"),
                "taml": ("92.25 ± 0.70", "95.14 ± 0.87"), "metalstm": ("90.63 ± 0.83", "97.11 ± 0.24"),
                "metalstm++": ("96.50 ± 0.42", "98.41 ± 0.31")}


def load_folder(folder: Path) -> dict[tuple[str, int, int], dict]:
    """(algorithm, ways, shots) -> result, for every result JSON in ``folder``."""
    results = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        result = load_result(path)
        p = result["protocol"]
        results[(result["algorithm"], int(p["ways"]), int(p["shots"]))] = result
    return results


def cell(result: dict | None) -> str:
    if result is None:
        return "not run"
    return f"{result['mean'] * 100:.1f} ± {result['ci95'] * 100:.1f}"


def budget_line(results: dict) -> str:
    if not results:
        return "no results yet"
    runs = sorted({r["protocol"].get("run_iterations") for r in results.values()})
    tasks = sorted({r["protocol"]["tasks"] for r in results.values()})
    return (f"meta-iterations per run: {', '.join(map(str, runs))}; meta-test tasks: "
            f"{', '.join(map(str, tasks))}; accuracy % ± 95% CI")


def table1(results: dict) -> str:
    lines = ["| algorithm | paper 1-shot | paper 5-shot | here 1-shot | here 5-shot | "
             "best at iteration (1-shot / 5-shot) |", "|---|---|---|---|---|---|"]
    for a in ALGORITHMS:
        one, five = results.get((a, 20, 1)), results.get((a, 20, 5))
        best = " / ".join("—" if r is None else str(r["protocol"]["iterations"]) for r in (one, five))
        lines.append(f"| {a} | {PAPER_TABLE1[a][0]} | {PAPER_TABLE1[a][1]} | {cell(one)} | "
                     f"{cell(five)} | {best} |")
    return "\n".join(lines) + f"\n\n{budget_line(results)}."


def ways_table(results: dict) -> str:
    ways = sorted({w for (_, w, s) in results if s == 1}) or [20, 50, 100]
    lines = ["| algorithm | " + " | ".join(f"{w}-way" for w in ways) + " |",
             "|---|" + "---|" * len(ways)]
    for a in ALGORITHMS:
        lines.append(f"| {a} | " + " | ".join(cell(results.get((a, w, 1))) for w in ways) + " |")
    return "\n".join(lines) + f"\n\n{budget_line(results)}."


def cost_table(path: Path) -> str:
    """Measured seconds per meta-iteration (CPU time) and the full-protocol hours per algorithm."""
    import json
    if not path.is_file():
        return f"not measured yet ({path} is missing)"
    record = json.loads(path.read_text())
    cases, estimate = record["cases"], record["estimate"]
    measured = sorted({c["ways"] for c in cases})
    runs = {(r["algorithm"], r["ways"]): r for r in estimate["runs"]}
    lines = ["| algorithm | " + " | ".join(f"s / iteration, {w}-way" for w in measured)
             + " | full run, 20-way | full run, 200-way (extrap.) | GPU estimate, 200-way |",
             "|---|" + "---|" * (len(measured) + 3)]
    for a in ALGORITHMS:
        per = {c["ways"]: c for c in cases if c["algorithm"] == a}
        if not per:
            continue
        r20, r200 = runs.get((a, 20)), runs.get((a, 200))
        gpu = r200.get("gpu_hours_estimate") if r200 else None
        lines.append(f"| {a} | " + " | ".join(
            f"{per[w]['iteration_cpu_s']:.2f}" if w in per else "—" for w in measured)
            + f" | {r20['cpu_hours']:.1f} CPU-h | {r200['cpu_hours']:.0f} CPU-h | "
            + (f"{gpu[0]:.1f} – {gpu[1]:.1f} GPU-h" if gpu else "—") + " |")
    totals = estimate["totals_stress_test"]
    gpu = totals.get("gpu_hours_estimate")
    lines += ["", f"The whole stress test ({totals['runs']} runs: 5 algorithms × 8 ways, 1-shot): "
              f"**about {totals['cpu_hours']:.0f} CPU-hours** on one thread of this machine "
              f"(about {totals['cpu_hours'] / 24:.0f} days), and by estimate **{gpu[0]:.0f} – "
              f"{gpu[1]:.0f} GPU-hours** — an estimate, not a measurement (no GPU was available): "
              f"{record['gpu_model']}, from the operations and FLOPs counted per iteration. "
              f"Table 1's 5-shot column adds 5 runs of about the cost of 100-way 1-shot (5× the "
              f"images per task of 20-way 1-shot)." if gpu else ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="cpu", help="which results/*/BUDGET folders (cpu)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--readme", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    sections = {f"omniglot20-{args.budget}": table1(load_folder(args.results / "omniglot20" / args.budget)),
                f"stress-test-{args.budget}": ways_table(load_folder(args.results / "stress-test" / args.budget)),
                "protocol-cost": cost_table(args.results / "stress-test" / "protocol_cost.json")}
    status = 0
    for name, text in sections.items():
        print(f"{name}:\n{text}\n")
        if args.readme:
            status |= write_section(args.readme, name, text)
    return status


if __name__ == "__main__":
    sys.exit(main())
