"""The meta-training loop: bitwise resume, best-model selection, logs, and the evaluation maths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from learnedopt.checkpoint import load_checkpoint
from learnedopt.evaluate import evaluate_tasks, summarize
from learnedopt.tasks.sine import SineTasks
from learnedopt.train import TrainConfig, load_metrics, train
from tests.runner_tiny import TinyMetaSGD, tiny_config, tiny_registry  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_registry")


def config(out, **overrides) -> TrainConfig:
    return tiny_config(out, **overrides)


def comparable(records):
    """Metrics records without wall-clock time, the one thing a resumed run may not reproduce."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_after_extension_is_bitwise_identical(tmp_path):
    straight = train(config(tmp_path / "straight"))
    train(config(tmp_path / "split", iterations=12))
    split = train(config(tmp_path / "split"), resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["iteration"] == b["iteration"] == 24
    assert_same_state(a["state_dict"], b["state_dict"])
    assert_same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert comparable(load_metrics(straight)) == comparable(load_metrics(split))
    assert_same_state(load_checkpoint(straight / "best.pt")["state_dict"],
                      load_checkpoint(split / "best.pt")["state_dict"])
    # Training changed every kind of meta-parameter (so the comparison above means something).
    fresh = TinyMetaSGD(**a["options"]).state_dict()
    for name in ("theta0", "alpha", "rule.weight", "rule.bias", "episodes_seen"):
        assert not torch.equal(fresh[name], a["state_dict"][name]), name


def test_resume_after_crash_is_bitwise_identical(tmp_path, monkeypatch):
    straight = train(config(tmp_path / "straight", checkpoint_every=4))
    crashed = config(tmp_path / "crashed", checkpoint_every=4)
    monkeypatch.setattr(TinyMetaSGD, "fail_at_call", 11)
    with pytest.raises(KeyboardInterrupt):
        train(crashed)
    # The crash came during iteration 11; the last checkpoint is from iteration 8, and the log
    # already holds the train record of iteration 9 that the resumed run must not duplicate.
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["iteration"] == 8
    assert any(r["iteration"] == 9 for r in load_metrics(tmp_path / "crashed"))
    monkeypatch.setattr(TinyMetaSGD, "fail_at_call", 0)
    run = train(crashed, resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert_same_state(a["state_dict"], b["state_dict"])
    assert comparable(load_metrics(straight)) == comparable(load_metrics(run))
    iterations = [(r["split"], r["iteration"]) for r in load_metrics(run)]
    assert len(iterations) == len(set(iterations)), "records duplicated by the resume"


def test_resume_refuses_changed_config_and_accidental_overwrite(tmp_path):
    train(config(tmp_path / "run", iterations=6))
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config(tmp_path / "run", iterations=6))
    with pytest.raises(ValueError, match="seed: 3 -> 4"):
        train(config(tmp_path / "run", iterations=12, seed=4), resume=True)


def test_best_checkpoint_keeps_every_meta_parameter(tmp_path):
    run = train(config(tmp_path / "run", iterations=24, val_every=4))
    best = load_checkpoint(run / "best.pt")
    val = [r for r in load_metrics(run) if r["split"] == "val"]
    best_record = min(val, key=lambda r: r["loss"])
    assert best["best"]["iteration"] == best_record["iteration"]
    assert best["best"]["value"] == best_record["loss"]
    assert [r["iteration"] for r in val if r["best"]][-1] == best_record["iteration"]
    # The same run stopped at the best iteration has exactly the parameters best.pt holds:
    # theta0, alpha, the rule and the buffer, nothing missing, nothing from a later iteration.
    reference = train(config(tmp_path / "ref", iterations=best_record["iteration"], val_every=4))
    assert_same_state(best["state_dict"], load_checkpoint(reference / "last.pt")["state_dict"])
    assert set(best["state_dict"]) == set(TinyMetaSGD().state_dict())
    # A reloaded model scores what validation recorded.
    model = TinyMetaSGD(**best["options"])
    model.load_state_dict(best["state_dict"])
    sampler = SineTasks(5, 5)
    losses = evaluate_tasks(model, sampler, "val", 20, 10, seed=3)["loss"]
    assert losses.mean().item() == pytest.approx(best_record["loss"], rel=1e-6)


def test_run_directory_contents(tmp_path):
    run = train(config(tmp_path / "run", iterations=12))
    assert json.loads((run / "config.json").read_text()) == config(tmp_path / "run",
                                                                  iterations=12).to_dict()
    records = load_metrics(run)
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["iteration"] for r in train_records] == [3, 6, 9, 12]
    assert all(math.isfinite(r["meta_loss"]) and r["support_points"] == 5 for r in train_records)
    val = [r for r in records if r["split"] == "val"]
    assert [r["iteration"] for r in val] == [6, 12]
    assert all(r["tasks"] == 20 and r["loss_ci95"] > 0 for r in val)
    last = load_checkpoint(run / "last.pt")
    assert last["metrics"] == records
    assert last["algorithm"] == "tiny" and last["options"]["meta_batch_size"] == 4
    assert last["task"] == {"name": "sine", "shots": 5, "queries": 5}
    assert last["protocol"]["k_shot"] == 5


def test_meta_training_learns(tmp_path):
    run = train(config(tmp_path / "run", iterations=150, val_every=150, options={"outer_lr": 0.01}))
    torch.manual_seed(3)  # the run's seed: the same initialisation as its iteration 0
    untrained = evaluate_tasks(TinyMetaSGD(outer_lr=0.01), SineTasks(5, 5), "val", 20, 10, seed=3)
    trained = [r["loss"] for r in load_metrics(run) if r["split"] == "val"][-1]
    assert trained < 0.7 * untrained["loss"].mean().item()


def test_bad_configs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        train(config(tmp_path / "a", iterations=0))
    with pytest.raises(ValueError, match="backend must be one of"):
        train(config(tmp_path / "b", backend="fast"))
    with pytest.raises(ValueError, match="task\\['name'\\] must be one of"):
        train(config(tmp_path / "c", task={"name": "mnist"}))
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['inner_lrr'\\]"):
        train(config(tmp_path / "d", options={"inner_lrr": 0.1}))


def test_summarize_confidence_interval():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    summary = summarize(values)
    mean = sum(values.tolist()) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values.tolist()) / 4)
    assert summary["mean"] == pytest.approx(mean)
    assert summary["std"] == pytest.approx(std)
    assert summary["ci95"] == pytest.approx(1.96 * std / math.sqrt(5))
    assert summary["tasks"] == 5
    # The interval shrinks as 1/sqrt(n) for the same spread.
    assert summarize(values.repeat(100))["ci95"] < summary["ci95"] / 9
    assert summarize(torch.tensor([0.5]))["ci95"] is None
    with pytest.raises(ValueError, match="NaN or infinite"):
        summarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="no values"):
        summarize(torch.tensor([]))
