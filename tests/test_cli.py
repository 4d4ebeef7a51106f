"""The learnedopt command: help texts, train -> eval -> plot end to end, result JSON contents."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnedopt import ops
from learnedopt.checkpoint import load_checkpoint
from learnedopt.cli import main, parse_option
from learnedopt.evaluate import evaluate_tasks, format_value, rebuild_algorithm
from learnedopt.tasks.sine import SineTasks
from tests.runner_tiny import tiny_registry  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_module(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "learnedopt", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def test_main_help_through_python_m():
    done = run_module("--help")
    assert done.returncode == 0, done.stderr
    for command in ("train", "eval", "plot", "info", "demo"):
        assert command in done.stdout
    assert "learnedopt demo --out runs/demo" in done.stdout


@pytest.mark.parametrize("argv, expected", [
    (["train"], ["--algorithm", "--data-root", "--first-order", "--opt KEY=VALUE", "--resume",
                 "examples:"]),
    (["eval"], ["--checkpoint", "--tasks", "--test-inner-steps", "95% CI", "examples:"]),
    (["plot"], ["curves", "gates", "sine-fit", "ways", "examples:"]),
    (["plot", "curves"], ["--out"]),
    (["plot", "gates"], ["--checkpoint"]),
    (["plot", "sine-fit"], ["--steps"]),
    (["plot", "ways"], ["results"]),
    (["info"], ["fused"]),
    (["demo"], ["--iterations", "examples:"]),
])
def test_subcommand_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in expected:
        assert word in text, f"{argv} --help lacks {word!r}"


def test_info_and_no_arguments(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert ops.describe() in text and torch.__version__ in text
    assert main([]) == 0
    assert ops.describe() in capsys.readouterr().out


def test_parse_option():
    assert parse_option("inner_lr=0.4") == ("inner_lr", 0.4)
    assert parse_option("inner-steps=5") == ("inner_steps", 5)
    assert parse_option("first_order=true") == ("first_order", True)
    assert parse_option("first_order=False") == ("first_order", False)
    assert parse_option("bn_mode=running") == ("bn_mode", "running")
    assert parse_option("sizes=[1, 8, 1]") == ("sizes", [1, 8, 1])
    for bad in ("inner_lr", "=3"):
        with pytest.raises(Exception, match="key=value"):
            parse_option(bad)


def test_train_eval_plot_end_to_end(tmp_path, capsys, tiny_registry):
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "tiny", "--task", "sine", "--shots", "5", "--iterations", "12",
            "--val-every", "4", "--val-tasks", "10", "--log-every", "2", "--out", str(run),
            "--no-progress", "--seed", "7", "--meta-batch", "3", "--opt", "hidden=8",
            "--first-order"]
    assert main(argv) == 0
    last = load_checkpoint(run / "last.pt")
    assert last["options"]["meta_batch_size"] == 3 and last["options"]["hidden"] == 8
    assert last["options"]["first_order"] is True and last["iteration"] == 12
    assert last["task"] == {"name": "sine", "shots": 5, "queries": 10}

    result_path = tmp_path / "result.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--tasks", "30", "--batch", "7",
                 "--test-inner-steps", "2", "--out", str(result_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(result_path.read_text())

    # The number: recomputed here from the checkpoint, independently of the CLI.
    best = load_checkpoint(run / "best.pt")
    algorithm = rebuild_algorithm(best)
    losses = evaluate_tasks(algorithm, SineTasks(5, 10), "test", 30, 7, seed=0, steps=2)["loss"]
    losses = losses.double()
    assert result["metric"] == "loss" and result["higher_is_better"] is False
    assert result["mean"] == pytest.approx(losses.mean().item(), rel=1e-6)
    assert result["ci95"] == pytest.approx(1.96 * losses.std().item() / math.sqrt(30), rel=1e-6)
    assert result["metrics"]["loss"]["tasks"] == 30
    assert f"loss {format_value('loss', result['mean'], result['ci95'])} (95% CI)" in printed

    protocol = result["protocol"]
    assert protocol["task"] == "sine" and protocol["split"] == "test"
    assert protocol["shots"] == 5 and protocol["queries"] == 10 and protocol["tasks"] == 30
    assert protocol["inner_steps_train"] == 1 and protocol["inner_steps_test"] == 2
    assert protocol["meta_gradient"] == "first-order" and protocol["meta_batch"] == 3
    assert protocol["iterations"] == best["best"]["iteration"] == best["iteration"]
    assert protocol["train_seed"] == 7 and protocol["test_seed"] == 0 and protocol["task_batch"] == 7
    assert result["backend"] == ops.describe()
    assert result["torch"] == torch.__version__ and result["machine"]["platform"]
    assert result["command"].startswith("learnedopt eval --checkpoint")
    datetime.datetime.fromisoformat(result["date"])
    assert result["algorithm"] == "tiny" and result["options"] == best["options"]

    figures = {
        "curves.png": ["plot", "curves", str(run)],
        "fit.png": ["plot", "sine-fit", "--checkpoint", str(run / "best.pt"), "--tasks", "3"],
        "gates.png": ["plot", "gates", "--checkpoint", str(run / "best.pt")],
    }
    # Accuracy against ways from classification results (made from the real one, relabelled).
    results = []
    for ways, accuracy in ((5, 0.9), (20, 0.7), (50, 0.5)):
        fake = {**result, "metric": "accuracy", "mean": accuracy, "ci95": 0.01,
                "protocol": {**protocol, "ways": ways, "shots": 1}}
        path = tmp_path / f"ways{ways}.json"
        path.write_text(json.dumps(fake))
        results.append(str(path))
    figures["ways.png"] = ["plot", "ways", *results]
    for name, args in figures.items():
        out = tmp_path / "figures" / name
        assert main([*args, "--out", str(out)]) == 0, name
        assert out.read_bytes()[:8] == PNG_SIGNATURE, name
        assert out.stat().st_size > 5000, name


def test_demo_runs_and_reruns(tmp_path, capsys, tiny_registry):
    argv = ["demo", "--algorithm", "tiny", "--iterations", "10", "--meta-batch", "2", "--tasks",
            "20", "--out", str(tmp_path / "demo"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert result["protocol"]["tasks"] == 20 and result["protocol"]["shots"] == 10
    assert format_value("loss", result["mean"], result["ci95"]) in printed
    for name in ("curves.png", "sine_fit.png"):
        assert (tmp_path / "demo" / name).read_bytes()[:8] == PNG_SIGNATURE
    # A second call finds the finished run and only re-evaluates: the same model, the same number.
    assert main(argv) == 0
    assert json.loads((tmp_path / "demo" / "result.json").read_text())["mean"] == result["mean"]


def test_clear_errors(tmp_path, capsys, tiny_registry):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--algorithm", "tiny", "--task", "sine", "--ways", "5",
                 "--out", str(tmp_path / "x")]) == 1
    assert "--ways do not apply to --task sine" in capsys.readouterr().err
    assert main(["train", "--algorithm", "tiny", "--task", "omniglot",
                 "--out", str(tmp_path / "x")]) == 1
    assert "needs --data-root" in capsys.readouterr().err
    assert main(["train", "--algorithm", "tiny", "--opt", "nope=1", "--iterations", "2",
                 "--out", str(tmp_path / "y")]) == 1
    assert "unknown option(s) ['nope']" in capsys.readouterr().err
    not_json = tmp_path / "r.json"
    not_json.write_text("{")
    assert main(["plot", "ways", str(not_json), "--out", str(tmp_path / "w.png")]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algorithm", "tiny", "--iterations", "0", "--out", str(tmp_path / "z")])
    assert exit_info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def _real_algorithms() -> bool:
    try:
        from learnedopt.algorithms import ALGORITHMS  # noqa: F401
        from learnedopt.learners import build_learner  # noqa: F401
    except ImportError:
        return False
    return "maml" in ALGORITHMS


@pytest.mark.skipif(not _real_algorithms(), reason="learnedopt.algorithms / learners not merged yet")
def test_real_maml_through_subprocess(tmp_path):
    run, result = tmp_path / "maml", tmp_path / "maml.json"
    done = run_module("train", "--algorithm", "maml", "--task", "sine", "--iterations", "6",
                      "--val-every", "3", "--val-tasks", "10", "--meta-batch", "2", "--out", str(run))
    assert done.returncode == 0, done.stderr
    done = run_module("eval", "--checkpoint", str(run / "best.pt"), "--tasks", "20",
                      "--out", str(result))
    assert done.returncode == 0, done.stderr
    record = json.loads(result.read_text())
    assert record["algorithm"] == "maml" and record["protocol"]["tasks"] == 20
    assert record["protocol"]["meta_gradient"] == "second-order"
    assert math.isfinite(record["mean"]) and record["ci95"] > 0
    checkpoint = load_checkpoint(run / "best.pt")
    assert {"theta0"} <= set(checkpoint["state_dict"])


def test_val_batch_bounds_the_tasks_adapted_at_once(tmp_path, tiny_registry, monkeypatch):
    # --val-batch: how many validation tasks one adapt_and_evaluate call holds (a large learner's
    # memory); recorded in config.json, and the validation score is that of the same tasks.
    import learnedopt.train as train_module
    sizes = []
    real = train_module.evaluate_tasks

    def spy(algorithm, sampler, split, num_tasks, batch_size, *args, **kwargs):
        sizes.append(batch_size)
        return real(algorithm, sampler, split, num_tasks, batch_size, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_tasks", spy)
    scores = {}
    for batch in (3, 25):
        run = tmp_path / f"run{batch}"
        assert main(["train", "--algorithm", "tiny", "--task", "sine", "--shots", "5",
                     "--iterations", "2", "--val-every", "2", "--val-tasks", "10",
                     "--val-batch", str(batch), "--out", str(run), "--no-progress"]) == 0
        assert json.loads((run / "config.json").read_text())["eval_batch"] == batch
        from learnedopt.train import load_metrics
        scores[batch] = [r for r in load_metrics(run) if r["split"] == "val"][0]
    assert 3 in sizes and 25 in sizes
    assert scores[3]["loss"] == pytest.approx(scores[25]["loss"], rel=1e-5)
