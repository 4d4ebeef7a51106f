"""Renders committed benchmark results (bench/results/*.json) as Markdown, plots and README sections.

    python3 -m bench.report                          # print the tables of the latest results
    python3 -m bench.report --plots bench/plots      # also write speed-up-against-n PNGs
    python3 -m bench.report --readme README.md       # rewrite the marked README sections

For each device, benchmark and CPU SIMD path (avx512, avx2) the newest file is used (or exactly
the files given). README.md
must contain the markers

    <!-- bench:cpu:start --> ... <!-- bench:cpu:end -->
    <!-- bench:gpu:start --> ... <!-- bench:gpu:end -->

and everything between a pair is replaced; the tables there are generated, never typed in.
Files labelled "smoke" (harness checks) are left out unless --include-smoke is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's bench
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import results

SECTIONS = {"cpu": "cpu", "cuda": "gpu"}  # result device -> README marker name


# The CPU kernels' SIMD paths, best first. Records made before results named their path came
# from AVX-512 hosts; they count as that path.
SIMD_PATHS = ("avx512", "avx2", "baseline")


def simd_path(record: dict) -> str | None:
    """The CPU SIMD path a record's kernels took (None on a GPU)."""
    if record["device"] != "cpu":
        return None
    return record.get("machine", {}).get("simd_path") or SIMD_PATHS[0]


def latest(records: list[tuple[Path, dict]]) -> dict[tuple[str, str, str | None], tuple[Path, dict]]:
    """The newest record per (device, benchmark, CPU SIMD path): a run on the AVX2 path (an
    AVX2-only host, or LEARNEDOPT_CPU_CAPABILITY=avx2) is shown beside the AVX-512 one, not
    instead of it."""
    chosen: dict[tuple[str, str, str | None], tuple[Path, dict]] = {}
    for path, record in records:
        key = (record["device"], record["benchmark"], simd_path(record))
        if key not in chosen or record["date"] > chosen[key][1]["date"]:
            chosen[key] = (path, record)
    return chosen


def load_all(paths: list[Path], include_smoke: bool) -> list[tuple[Path, dict]]:
    loaded = []
    for path in paths:
        record = results.load_json(path)
        if record.get("label") == "smoke" and not include_smoke:
            continue
        loaded.append((path, record))
    return loaded


def plot_speedups(record: dict, out: Path) -> Path | None:
    """Fused speed-up over eager and over compile against n, one panel per op; None when the
    record holds no fused measurement with a comparison."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"--plots needs matplotlib ({exc}); pip install matplotlib") from None
    from bench.ops import MODES, OP_NAMES
    fused = [r for r in record["results"] if r["status"] == "ok" and r["impl"] == "fused"]
    op_names = [op for op in OP_NAMES if any(r["op"] == op for r in fused)]
    if not op_names:
        return None
    fig, axes = plt.subplots(1, len(op_names), figsize=(4.2 * len(op_names), 3.6), squeeze=False)
    for ax, op in zip(axes[0], op_names):
        for base, color in (("eager", "tab:blue"), ("compile", "tab:orange")):
            for mode, style in zip(MODES, ("-", "--")):
                points = sorted((r["n"], r[f"speedup_vs_{base}"]) for r in fused
                                if r["op"] == op and r["mode"] == mode
                                and r.get(f"speedup_vs_{base}") is not None)
                if points:
                    ax.plot(*zip(*points), style, marker="o", color=color,
                            label=f"vs {base}, {mode}")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("coordinates n")
        ax.set_ylabel("fused speed-up (×)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = record["machine"]
    fig.suptitle(f"fused kernel speed-up, {m['gpu_model'] or m['cpu_model']} "
                 f"({m['threads']} threads), torch {m['torch']}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def section(device: str, chosen: dict, plots: dict[str, Path], readme_dir: Path | None) -> str:
    parts = []
    plotted = False
    for benchmark in results.BENCHMARKS:
        for path_name in (SIMD_PATHS if device == "cpu" else (None,)):
            entry = chosen.get((device, benchmark, path_name))
            if entry is None:
                continue
            path, record = entry
            if path_name not in (None, SIMD_PATHS[0]):
                host = record.get("machine", {}).get("host_simd_path")
                if host == path_name:  # a machine of its own: its times are not comparable
                    parts.append(f"*The same benchmark on an {path_name.upper()}-only host (another "
                                 "machine: compare its ratios, not its times):*")
                else:
                    parts.append(f"*The same benchmark on the {path_name.upper()} kernels:*")
            parts.append(results.render(record))
            if benchmark == "ops" and device in plots and not plotted:  # beside the best path's table
                plotted = True
                link = os.path.relpath(plots[device], readme_dir) if readme_dir else str(plots[device])
                parts.append(f"![fused speed-up against n]({Path(link).as_posix()})")
            source = os.path.relpath(path, readme_dir) if readme_dir else str(path)
            parts.append(f"<sub>Source: `{Path(source).as_posix()}`</sub>")
    if not parts:
        return f"No {device.upper()} benchmark results are committed yet."
    return "\n\n".join(parts)


def rewrite_readme(readme: Path, sections: dict[str, str]) -> None:
    """Replace the text between each marker pair; fail before writing if any marker is missing."""
    text = readme.read_text()
    for name, body in sections.items():
        start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < 0 or j < i:
            raise SystemExit(f"{readme}: needs the markers {start} and {end} (in that order) "
                             f"around the {name.upper()} benchmark section")
        text = text[:i + len(start)] + "\n" + body + "\n" + text[j:]
    fd, tmp = tempfile.mkstemp(dir=readme.parent, prefix=readme.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, readme)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Markdown tables, plots and README sections from benchmark JSON results.",
        epilog="Example: python3 -m bench.report --plots bench/plots --readme README.md")
    parser.add_argument("files", nargs="*", type=Path,
                        help="result files (default: every bench/results/*.json, newest per "
                             "device, benchmark and CPU SIMD path)")
    parser.add_argument("--plots", type=Path, help="folder for speed-up-against-n PNGs")
    parser.add_argument("--readme", type=Path, help="README to rewrite between the bench markers")
    parser.add_argument("--include-smoke", action="store_true",
                        help="also use files labelled smoke (harness checks, not results)")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, str]:
    args = parse_args(argv)
    files = args.files or sorted(results.RESULTS_DIR.glob("*.json"))
    chosen = latest(load_all(files, args.include_smoke))
    plots: dict[str, Path] = {}
    if args.plots:
        for device in SECTIONS:
            # One plot per device, of its best SIMD path with a result (an AVX2-only host's run
            # when no AVX-512 one is committed).
            best = next((chosen[key] for key in ((device, "ops", p) for p in (*SIMD_PATHS, None))
                         if key in chosen), None)
            if best is not None:
                made = plot_speedups(best[1], args.plots / f"ops-speedup-{device}.png")
                if made:
                    plots[device] = made
    readme_dir = args.readme.resolve().parent if args.readme else None
    sections = {SECTIONS[d]: section(d, chosen, {k: v.resolve() for k, v in plots.items()},
                                     readme_dir)
                for d in SECTIONS}
    for name, body in sections.items():
        print(f"## Benchmarks: {name.upper()}\n\n{body}\n")
    if args.readme:
        rewrite_readme(args.readme, sections)
        print(f"rewrote the bench sections of {args.readme}")
    for path in plots.values():
        print(f"wrote {path}")
    return sections


if __name__ == "__main__":
    main()
