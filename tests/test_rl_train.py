"""Meta-RL through the training loop and the CLI: train, eval (returns after 0..3 inner steps in
the result JSON), bitwise resume, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from learnedopt.checkpoint import load_checkpoint
from learnedopt.cli import main
from learnedopt.rl.policy import PolicyLearner, default_policy_spec
from learnedopt.train import TrainConfig, train

TINY = ["--meta-batch", "2", "--opt", "trajectories=3", "--val-every", "1", "--val-tasks", "2",
        "--seed", "1", "--no-progress"]


def test_cli_trains_and_evaluates_navigation(tmp_path, capsys):
    run = tmp_path / "maml"
    assert main(["train", "--task", "navigation2d", "--reward", "squared", "--algorithm", "maml",
                 "--iterations", "1", "--opt", "outer_optimizer=adam", "--opt", "report_steps=1",
                 "--out", str(run), *TINY]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert val and {"return", "return_after_0", "return_after_1"} == {
        k for k in val[0] if k.startswith("return") and not k.endswith("ci95")}
    out = tmp_path / "result.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--tasks", "3", "--batch", "2",
                 "--test-inner-steps", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metric"] == "return" and result["higher_is_better"] is True
    assert [f"return_after_{k}" in result["metrics"] for k in range(4)] == [True] * 4
    assert result["metrics"]["return"] == result["metrics"]["return_after_3"]
    assert result["protocol"]["task"] == "navigation2d" and result["protocol"]["tasks"] == 3
    assert result["protocol"]["sampler"]["reward"] == "squared"
    assert result["options"]["inner_lr"] == 0.1 and result["options"]["outer_optimizer"] == "adam"
    assert "maml on navigation2d (test, 3 tasks, 3 inner steps): return" in capsys.readouterr().out
    # The figures: returns against inner steps, trajectories before and after adaptation.
    for argv in (["returns", str(out)], ["trajectories", "--checkpoint", str(run / "best.pt"),
                                         "--goals", "2"]):
        png = tmp_path / f"{argv[0]}.png"
        assert main(["plot", *argv, "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def config(out, iterations):
    return TrainConfig(algorithm="metasgd", task={"name": "navigation2d", "max_steps": 20},
                       out=str(out), learner=default_policy_spec(hidden_sizes=[16, 16]),
                       options={"meta_batch_size": 2, "trajectories": 3, "fisher": "first_order",
                                "report_steps": 1},
                       iterations=iterations, val_every=2, val_tasks=2, checkpoint_every=1, seed=3,
                       progress=False)


def test_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    whole = load_checkpoint(train(config(tmp_path / "a", 3)) / "last.pt")
    train(config(tmp_path / "b", 1))
    resumed = load_checkpoint(train(config(tmp_path / "b", 3), resume=True) / "last.pt")
    assert whole["iteration"] == resumed["iteration"] == 3
    timeless = lambda records: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    assert timeless(whole["metrics"]) == timeless(resumed["metrics"])
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_policy_module_by_import_path(tmp_path):
    run = tmp_path / "own"
    assert main(["train", "--task", "navigation2d", "--algorithm", "metasgd", "--iterations", "1",
                 "--model", "learnedopt.rl.policy:GaussianMLPPolicy", "--model-opt",
                 "hidden_sizes=[12, 12]", "--opt", "outer_optimizer=adam", "--opt", "report_steps=0",
                 "--out", str(run), *TINY]) == 0
    learner = load_checkpoint(run / "best.pt")["learner"]
    assert learner["name"] == "policy" and learner["kwargs"] == {"hidden_sizes": [12, 12]}
    assert ["mean.0.weight", [12, 2]] in learner["params"]


def test_random_baseline_keeps_the_initial_policy(tmp_path):
    run = tmp_path / "random"
    assert main(["train", "--task", "navigation2d", "--algorithm", "maml", "--iterations", "1",
                 "--opt", "outer_optimizer=none", "--out", str(run), *TINY]) == 0
    checkpoint = load_checkpoint(run / "best.pt")
    torch.manual_seed(1)  # the trainer's seed: the policy as it was initialised
    assert torch.equal(checkpoint["state_dict"]["theta0"], PolicyLearner().init_parameters())


@pytest.mark.parametrize("argv, message", [
    (["--algorithm", "taml"], "cannot adapt a policy"),
    (["--algorithm", "maml", "--shots", "5"], "do not apply to --task navigation2d"),
    (["--algorithm", "maml", "--opt", "outer_optimizer=sgd"], "outer_optimizer must be one of"),
])
def test_cli_refuses_what_does_not_apply(tmp_path, capsys, argv, message):
    assert main(["train", "--task", "navigation2d", "--iterations", "1",
                 "--out", str(tmp_path / "x"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_reward_flag_is_for_navigation_only(tmp_path, capsys):
    assert main(["train", "--task", "sine", "--reward", "squared", "--algorithm", "maml",
                 "--iterations", "1", "--out", str(tmp_path / "s")]) == 1
    assert "--reward applies to --task navigation2d only" in capsys.readouterr().err
