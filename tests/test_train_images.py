"""Training through learnedopt.train on a generated Omniglot-layout archive: episodic and
transfer algorithms alike (the transfer baselines size their pre-training head from the sampler)."""

from __future__ import annotations

import pytest

from learnedopt.evaluate import evaluate_checkpoint
from learnedopt.train import TrainConfig, train
from tests.fewshot_data import tiny_omniglot  # noqa: F401  (session fixture)


@pytest.mark.parametrize("algorithm", ["maml", "metalstm", "turtle", "scratch", "finetune", "baseline++"])
def test_train_and_evaluate_on_generated_omniglot(algorithm, tiny_omniglot, tmp_path):  # noqa: F811
    task = {"name": "omniglot", "data_root": str(tiny_omniglot["zips"]), "ways": 3, "shots": 1,
            "queries": 1, "split": "vinyals", "cache_dir": str(tmp_path / "cache")}
    options = {"meta_batch_size": 2} if algorithm in ("maml", "turtle") else {}
    run = train(TrainConfig(algorithm=algorithm, task=task, out=str(tmp_path / "run"),
                            iterations=2, val_every=2, val_tasks=2, options=options,
                            progress=False))
    result = evaluate_checkpoint(run / "best.pt", num_tasks=4, batch_size=2)
    assert result["metric"] == "accuracy" and 0.0 <= result["mean"] <= 1.0
    assert result["protocol"]["ways"] == 3
