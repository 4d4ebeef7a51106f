"""Renders committed result JSONs (from `learnedopt eval --out`) as a Markdown table and, with
--readme, writes it between `<!-- results:NAME:start -->` and `<!-- results:NAME:end -->`, so
the README's result tables are generated from files, never typed in.

    python scripts/results_table.py results/sine --name sine --readme README.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from learnedopt.evaluate import load_result


def backend(line: str) -> str:
    """'fused (cpu)' when every op ran its fused kernel, else the backend choice as recorded."""
    if line.startswith("backend=reference"):
        return "reference"
    devices = set(re.findall(r"(?:preprocess|meta_lstm_step|turtle_step): ([a-z, ]+)", line))
    return f"fused ({devices.pop()})" if len(devices) == 1 and "none" not in devices else line


def row(result: dict) -> str:
    p = result["protocol"]
    scale, unit = (100.0, " %") if result["metric"] == "accuracy" else (1.0, "")
    ci = result["ci95"]
    digits = 1 if unit else 3
    value = (f"{result['mean'] * scale:.{digits}f} ± {ci * scale:.{digits}f}{unit}" if ci is not None
             else f"{result['mean'] * scale:.{digits}f}{unit}")
    steps = [p.get("inner_steps_train"), p.get("inner_steps_test")]
    steps_text = " / ".join("—" if v is None else str(v) for v in steps)
    setting = (f"{p['ways']}-way {p['shots']}-shot" if p.get("ways") else f"{p['shots']}-shot")
    return (f"| {result['algorithm']} | {setting} | {result['metric']} {value} | {p['tasks']} | "
            f"{steps_text} | "
            f"{p.get('meta_gradient') or '—'} | {p.get('iterations')} | {backend(result['backend'])} |")


def table(results: list[dict]) -> str:
    lines = ["| algorithm | setting | meta-test (mean ± 95% CI) | tasks | inner steps train / test "
             "| meta-gradient | iterations (best) | backend |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [row(r) for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of result JSON files")
    parser.add_argument("--name", required=True, help="marker name in the README")
    parser.add_argument("--readme", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    files = sorted(args.folder.glob("*.json"))
    if not files:
        print(f"no result files in {args.folder}", file=sys.stderr)
        return 1
    results = [load_result(f) for f in files]
    results.sort(key=lambda r: (r["metric"] != "loss", r["mean"] if r["metric"] == "loss" else -r["mean"]))
    text = table(results)
    print(text)
    if args.readme:
        return write_section(args.readme, args.name, text)
    return 0


def write_section(readme_path: Path, name: str, text: str) -> int:
    """Replace what lies between the README's ``results:NAME`` markers by ``text``; 1 (and a
    message) when the markers are missing."""
    readme = readme_path.read_text()
    start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
    if start not in readme or end not in readme:
        print(f"{readme_path} lacks the markers {start} / {end}", file=sys.stderr)
        return 1
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    readme_path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
