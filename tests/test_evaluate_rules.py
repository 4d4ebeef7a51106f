"""Smoke test of scripts/evaluate_rules.py at tiny settings: it runs end to end on stand-in rule
files (untrained rules: this checks the harness, not the rules) and a synthetic Omniglot-layout
folder, and writes a JSON whose every curve is finite or reported as diverged."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from learnedopt.optim import save_rule
from learnedopt.rules import MetaLSTMRule, TurtleRule
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import evaluate_rules  # noqa: E402

STEPS, SEEDS = 4, 2


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    torch.manual_seed(0)
    paths = {"turtle": folder / "turtle.pt", "metalstm": folder / "metalstm.pt",
             "metasgd": folder / "metasgd.pt"}
    save_rule(paths["turtle"], TurtleRule(), alpha=torch.full((10,), 0.01), max_t=4)
    save_rule(paths["metalstm"], MetaLSTMRule())
    save_rule(paths["metasgd"], None, alpha=torch.full((10,), 0.01))
    return [arg for kind, path in paths.items() for arg in (f"--{kind}-rule", str(path))]


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    """images_evaluation/<Alphabet>/<characterNN>/<drawing>.png with random strokes: enough
    characters and drawings for a 20-way problem with 15 training drawings per class."""
    from PIL import Image
    root = tmp_path_factory.mktemp("omniglot")
    g = torch.Generator().manual_seed(0)
    for c in range(evaluate_rules.OMNIGLOT_WAYS + 1):
        folder = root / "images_evaluation" / f"Alphabet{c % 3}" / f"character{c:02d}"
        folder.mkdir(parents=True)
        for d in range(evaluate_rules.OMNIGLOT_TRAIN_PER_CLASS + 2):
            pixels = ((torch.rand(20, 20, generator=g) > 0.3).to(torch.uint8) * 255).numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"{c:02d}_{d:02d}.png")
    return root


def tiny_args(rules, omniglot_root, tmp_path, *extra):
    return [*rules, "--data-root", str(omniglot_root), "--cache-dir", str(tmp_path / "cache"),
            "--steps", str(STEPS), "--seeds", str(SEEDS), "--sgd-grid", "0.01,0.1",
            "--adam-grid", "0.001,0.01", "--learned-lr-grid", "0.5", *extra]


def check_curve(curve, diverged_at):
    """A finished run has STEPS + 1 finite points; a diverged one stops at its divergence step."""
    if diverged_at is None:
        assert len(curve) == STEPS + 1
        assert all(isinstance(v, float) and math.isfinite(v) for v in curve)
    else:
        assert len(curve) == diverged_at + 1
        assert all(math.isfinite(v) for v in curve[:-1])


def test_runs_and_writes_complete_json(rules, omniglot_root, tmp_path, capsys):
    out, png = tmp_path / "result.json", tmp_path / "result.png"
    code = evaluate_rules.main(tiny_args(rules, omniglot_root, tmp_path, "--out", str(out),
                                         "--plot", str(png), "--workers", "2"))
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("date", "command", "machine", "protocol", "tuning", "rules", "verdicts"):
        assert key in result, key
    assert result["machine"]["torch"] == torch.__version__
    assert result["protocol"]["tuning_seed"] not in result["protocol"]["evaluation_seeds"]
    assert set(result["problems"]) == set(evaluate_rules.PROBLEMS)
    for name, problem in result["problems"].items():
        entries = problem["entries"]
        for label in ("turtle", "metalstm", "metasgd", "sgd (tuned)", "adam (tuned)"):
            assert label in entries, (name, label)
        assert entries["turtle"]["lr"] == 1.0  # the shipped rule is reported as shipped
        tuning = result["tuning"][name]
        assert entries["sgd (tuned)"]["lr"] == tuning["sgd"]["picked_lr"] in tuning["sgd"]["grid"]
        assert sorted(tuning["turtle"]["grid"]) == [0.5, 1.0]  # the sweep always contains 1
        for label, entry in entries.items():
            summary = entry["summary"]
            assert summary["seeds"] == list(range(SEEDS))
            for curve, diverged_at in zip(summary["curves_per_seed"], summary["diverged_at_step"]):
                check_curve(curve, diverged_at)
            finals = summary["final_loss"]
            if len(summary["diverged"]) < SEEDS:
                assert math.isfinite(finals["mean"]) and finals["std"] >= 0
                assert len(summary["curve"]["mean"]) == STEPS + 1
        assert name in result["verdicts"][name] and "where the learned rules lose" in result["verdicts"][name]
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| optimizer |" in printed and "Held-out" in printed
    assert printed.count("where the learned rules lose") == 3


def test_divergence_is_caught_and_reported(rules, omniglot_root, tmp_path):
    """An absurd SGD lr blows up on the tuning seed: recorded as diverged (null), not picked."""
    out = tmp_path / "result.json"
    argv = tiny_args(rules, omniglot_root, tmp_path, "--out", str(out), "--workers", "1",
                     "--problems", "sine-wide", "--learned", "metasgd")
    argv[argv.index("--sgd-grid") + 1] = "0.001,1e6"
    assert evaluate_rules.main(argv) == 0
    result = json.loads(out.read_text())
    sgd = result["tuning"]["sine-wide"]["sgd"]
    assert sgd["final_loss"][1] is None and sgd["final_loss"][0] is not None
    assert sgd["picked_lr"] == 0.001


def test_summary_excludes_and_counts_diverged_seeds():
    runs = [{"seed": 0, "curve": [4.0, 2.0, 1.0], "diverged_at": None},
            {"seed": 1, "curve": [4.0, 3.0, 2.0], "diverged_at": None},
            {"seed": 2, "curve": [4.0, None], "diverged_at": 1}]
    for r in runs:
        r["seconds"] = 0.0
    summary = evaluate_rules.summarize(runs)
    assert summary["diverged"] == [2]
    assert summary["final_loss"]["per_seed"] == [1.0, 2.0, None]
    assert summary["final_loss"]["mean"] == pytest.approx(1.5)
    assert summary["curve"]["mean"] == pytest.approx([4.0, 2.5, 1.5])


def test_bad_arguments_fail_clearly(rules, omniglot_root, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    with pytest.raises(SystemExit):
        evaluate_rules.main(tiny_args(rules, omniglot_root, tmp_path, "--out", out,
                                      "--tuning-seed", "0"))
    assert "is one of the evaluation seeds" in capsys.readouterr().err
    argv = tiny_args(rules, omniglot_root, tmp_path, "--out", out)
    argv[argv.index("--turtle-rule") + 1] = str(tmp_path / "missing.pt")
    assert evaluate_rules.main(argv) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_bfloat16_state_run_and_compare(rules, omniglot_root, tmp_path):
    """--state-dtype bfloat16 reaches the optimizers (recorded in the JSON) and `compare` puts the
    learned rules of two runs side by side, with per-seed ratios of their final losses."""
    paths = {}
    for dtype in ("float32", "bfloat16"):
        paths[dtype] = tmp_path / f"{dtype}.json"
        argv = tiny_args(rules, omniglot_root, tmp_path, "--out", str(paths[dtype]), "--workers",
                         "1", "--problems", "sine-wide", "--learned", "turtle,metalstm",
                         "--state-dtype", dtype)
        assert evaluate_rules.main(argv) == 0
        assert json.loads(paths[dtype].read_text())["protocol"]["state_dtype"] == dtype
    made = []
    real = evaluate_rules.LEARNED_CLASS["turtle"].from_pretrained
    try:  # the optimizers built under bfloat16 do store their state reduced
        evaluate_rules.LEARNED_CLASS["turtle"].from_pretrained = \
            lambda *a, **k: made.append(k.get("state_dtype")) or real(*a, **k)
        evaluate_rules.make_optimizer("turtle", 1.0, [torch.nn.Parameter(torch.zeros(3))],
                                      {"turtle": rules[1]}, "bfloat16")
    finally:
        evaluate_rules.LEARNED_CLASS["turtle"].from_pretrained = real
    assert made == [torch.bfloat16]
    table = evaluate_rules.compare(str(paths["float32"]), str(paths["bfloat16"]))
    assert "final loss, float32" in table and "final loss, bfloat16" in table
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert {row.split(" | ")[0].split(" (")[0].strip("| ") for row in rows} == {"turtle", "metalstm"}
    assert all("sine-wide" in row for row in rows)
