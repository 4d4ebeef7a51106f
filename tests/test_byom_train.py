"""The whole training loop on a user's own model and tasks: the Python entry point
(learnedopt.train.meta_train) with objects and with import paths, the CLI's --model / --tasks,
evaluation from the run directory alone, bitwise resume, and a custom loss."""

from __future__ import annotations

import json

import pytest
import torch

from learnedopt.checkpoint import load_checkpoint
from learnedopt.cli import main
from learnedopt.evaluate import evaluate_checkpoint
from learnedopt.learners import from_module
from learnedopt.train import load_metrics, meta_train
from tests import user_models
from tests.fewshot_data import tiny_omniglot  # noqa: F401  (session fixture)

RUN = dict(iterations=8, val_every=4, val_tasks=10, eval_batch=5, log_every=2, seed=1,
           progress=False)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_meta_train_with_objects_then_evaluate_with_them(tmp_path):
    torch.manual_seed(0)
    model = user_models.sine_mlp()
    run = meta_train(model, user_models.LinearTasks(), algorithm="metasgd", out=tmp_path / "run",
                     loss="mse", options={"meta_batch_size": 4}, **RUN)
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["learner"]["name"] == "module" and checkpoint["learner"]["loss"] == "mse"
    assert checkpoint["learner"]["factory"] is None and checkpoint["task"]["factory"] is None
    assert checkpoint["protocol"] == {"name": "linear", "shots": 5, "queries": 5}
    with pytest.raises(ValueError, match=r"pass it again \(tasks=...\)"):
        evaluate_checkpoint(run / "best.pt", num_tasks=10, model=user_models.sine_mlp())
    with pytest.raises(ValueError, match=r"pass it again \(model=...\)"):
        evaluate_checkpoint(run / "best.pt", num_tasks=10, tasks=user_models.LinearTasks())
    result = evaluate_checkpoint(run / "best.pt", num_tasks=20, model=user_models.sine_mlp(),
                                 tasks=user_models.LinearTasks())
    assert result["metric"] == "loss" and result["metrics"]["loss"]["tasks"] == 20
    # Another architecture cannot load the checkpoint by accident.
    with pytest.raises(ValueError, match="differ from the recorded ones"):
        evaluate_checkpoint(run / "best.pt", num_tasks=10, tasks=user_models.LinearTasks(),
                            model=torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.Linear(3, 1)))


def test_import_paths_rebuild_everything_and_resume_is_bitwise(tmp_path):
    spec = dict(algorithm="turtle", loss="mse", head="4", options={"meta_batch_size": 2,
                                                                    "inner_steps": 2})
    straight = meta_train("tests.user_models:sine_mlp", "tests.user_models:linear_tasks",
                          out=tmp_path / "straight", **spec, **RUN)
    meta_train("tests.user_models:sine_mlp", "tests.user_models:linear_tasks",
               out=tmp_path / "split", **spec, **{**RUN, "iterations": 4})
    split = meta_train("tests.user_models:sine_mlp", "tests.user_models:linear_tasks",
                       out=tmp_path / "split", resume=True, **spec, **RUN)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["iteration"] == b["iteration"] == 8
    _same_state(a["state_dict"], b["state_dict"])
    fresh = from_module(user_models.sine_mlp(), loss="mse").init_parameters()
    assert not torch.equal(a["state_dict"]["theta0"], fresh)
    records = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in load_metrics(straight)]
    assert records == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in load_metrics(split)]
    # The run directory alone rebuilds the model and the tasks.
    result = evaluate_checkpoint(straight / "best.pt", num_tasks=10)
    assert result["learner"]["factory"] == "tests.user_models:sine_mlp"


def test_custom_loss_by_import_path(tmp_path):
    run = meta_train("tests.user_models:sine_mlp", "tests.user_models:linear_tasks",
                     algorithm="maml", out=tmp_path / "run", loss="tests.user_models:smooth_l1",
                     options={"meta_batch_size": 2}, **RUN)
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["learner"]["loss"] == "tests.user_models:smooth_l1"
    algorithm_loss = evaluate_checkpoint(run / "best.pt", num_tasks=10)["metrics"]["loss"]["mean"]
    assert algorithm_loss > 0


def test_cli_model_and_tasks_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--algorithm", "metasgd", "--model", "tests.user_models:sine_mlp",
            "--tasks", "tests.user_models:linear_tasks", "--tasks-opt", "shots=4", "--loss", "mse",
            "--iterations", "4", "--val-every", "2", "--val-tasks", "6", "--meta-batch", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == {"name": "custom", "factory": "tests.user_models:linear_tasks",
                              "kwargs": {"shots": 4}}
    assert config["learner"]["factory"] == "tests.user_models:sine_mlp"
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--tasks", "6",
                 "--out", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["protocol"]["sampler"]["shots"] == 4
    assert main(args[:-3] + ["--iterations", "6", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 6


def test_cli_user_conv4_on_omniglot_episodes(tmp_path, tiny_omniglot):
    out = tmp_path / "conv"
    assert main(["train", "--algorithm", "turtle", "--task", "omniglot", "--data-root",
                 str(tiny_omniglot["folders"]), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--model", "tests.user_models:conv4", "--model-opt", "ways=3", "--model-opt",
                 "filters=4", "--head", "17", "--task-family", "omniglot", "--inner-steps", "1",
                 "--iterations", "2", "--val-every", "2", "--val-tasks", "4",
                 "--out", str(out), "--no-progress"]) == 0
    result = evaluate_checkpoint(out / "best.pt", num_tasks=4)
    assert result["metric"] == "accuracy" and 0.0 <= result["mean"] <= 1.0


@pytest.mark.parametrize("argv, message", [
    (["--model-opt", "ways=3"], "give it with --model"),
    (["--tasks-opt", "shots=3"], "--tasks-opt needs --tasks"),
    (["--task", "custom"], "--task custom needs --tasks"),
    (["--tasks", "tests.user_models:linear_tasks", "--task", "omniglot"], "does not combine"),
    (["--model", "tests.user_models:nothing_here"], "has no attribute 'nothing_here'"),
    (["--model", "no_such_package.nets:net"], "cannot import module 'no_such_package.nets'"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, argv, message):
    code = main(["train", "--algorithm", "maml", "--out", str(tmp_path / "x"), "--iterations", "1",
                 "--no-progress", *argv])
    assert code == 1
    assert message in capsys.readouterr().err


def _feature_dataset(classes: int = 9, per_class: int = 6):
    """A map-style data set of (feature vector, class) pairs: class c's vectors cluster at c."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(classes * per_class, 6, generator=g) * 0.3
    y = torch.arange(classes).repeat_interleave(per_class)
    x[:, 0] += y.float()
    return torch.utils.data.TensorDataset(x, y)


def test_dataset_episodes_and_custom_tasks_with_a_user_model(tmp_path):
    from learnedopt.tasks import CustomTasks, EpisodeTasks
    episodes = EpisodeTasks.from_class_split(_feature_dataset(), val_classes=3, test_classes=3,
                                             ways=3, shots=1, queries=2)
    torch.manual_seed(0)
    run = meta_train(user_models.RichNet(), episodes, algorithm="turtle", out=tmp_path / "episodes",
                     head="out", options={"meta_batch_size": 2, "inner_steps": 2}, **RUN)
    assert load_checkpoint(run / "best.pt")["learner"]["loss"] == "cross_entropy"  # "auto"

    class Shifts(CustomTasks):
        """Regression by hand, one task at a time: y = x + shift."""
        kind, num_classes = "regression", 0

        def draw_task(self, generator, split):
            shift = torch.rand((), generator=generator) * 2 - 1
            x = torch.rand(8, 1, generator=generator)
            return x[:4], x[:4] + shift, x[4:], x[4:] + shift

    run = meta_train(user_models.sine_mlp(), Shifts(), algorithm="metasgd",
                     out=tmp_path / "custom", options={"meta_batch_size": 2}, **RUN)
    records = [r for r in load_metrics(run) if r["split"] == "val"]
    assert len(records) == 2 and all(r["loss"] > 0 for r in records)


def test_rule_meta_trained_on_a_user_model_loads_into_the_drop_in_optimizers(tmp_path, capsys):
    """End to end: meta-train TURTLE and the enhanced LSTM on a user module, export the rules
    with `learnedopt export-rule`, load them into the drop-in optimizers for that module: each
    parameter starts at its own meta-learned step sizes."""
    from learnedopt.optim import LSTMOptimizer, TurtleOptimizer
    for algorithm in ("turtle", "enhanced-lstm"):
        run = meta_train("tests.user_models:sine_mlp", "tests.user_models:linear_tasks",
                         algorithm=algorithm, out=tmp_path / algorithm, loss="mse",
                         options={"meta_batch_size": 2, "inner_steps": 2}, **RUN)
        rule_file = tmp_path / f"{algorithm}.pt"
        assert main(["export-rule", str(run / "best.pt"), str(rule_file)]) == 0
        model = user_models.sine_mlp()
        if algorithm == "turtle":
            opt = TurtleOptimizer.from_pretrained(rule_file, model.named_parameters())
            alpha = load_checkpoint(run / "best.pt")["state_dict"]["alpha"]
            offset = 0
            for _, p in model.named_parameters():
                expected = alpha[offset:offset + p.numel()].view_as(p)
                assert torch.equal(opt.state[p]["alpha"], expected)
                offset += p.numel()
        else:
            opt = LSTMOptimizer.from_pretrained(rule_file, model.named_parameters())
        x = torch.rand(16, 1)
        loss = torch.nn.functional.mse_loss(model(x), 2 * x)
        loss.backward()
        if algorithm == "turtle":
            opt.step()
        else:
            opt.step(loss=loss.detach())  # the LSTM's rule reads the loss
        assert all(torch.isfinite(p).all() for p in model.parameters())
