"""Two runs with the same seed give bitwise-equal checkpoints, with 1 and with 2 threads, for the
fused rules (TURTLE second-order, meta-learner LSTM first-order) and MAML."""

from __future__ import annotations

import pytest
import torch

from learnedopt.checkpoint import load_checkpoint
from learnedopt.train import TrainConfig, train


def run(out, algorithm: str, options: dict) -> dict:
    config = TrainConfig(algorithm=algorithm, task={"name": "sine", "shots": 5, "queries": 5},
                         out=str(out), iterations=6, val_every=3, val_tasks=10, eval_batch=10,
                         log_every=3, seed=7, progress=False,
                         options={"meta_batch_size": 4, "inner_steps": 2, **options})
    return load_checkpoint(train(config) / "last.pt")


def tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    found = dict(checkpoint["state_dict"])
    for index, state in checkpoint["optimizer"]["state"].items():
        found.update({f"adam.{index}.{k}": v for k, v in state.items()})
    found.update({f"rng.{k}": v for k, v in checkpoint["rng"].items() if v is not None})
    return found


def assert_bitwise(a: dict, b: dict) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and ta[name].shape == tb[name].shape, name
        assert torch.equal(ta[name].reshape(-1).view(torch.uint8),
                           tb[name].reshape(-1).view(torch.uint8)), name
    drop = lambda records: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]  # noqa: E731
    assert drop(a["metrics"]) == drop(b["metrics"])


@pytest.mark.parametrize("algorithm, options", [("turtle", {"first_order": False}),
                                                ("metalstm", {"first_order": True}),
                                                ("maml", {})])
def test_same_seed_same_bits_with_one_and_two_threads(tmp_path, algorithm, options):
    previous = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = [run(tmp_path / f"t{threads}-{i}", algorithm, options)
                                for i in range(2)]
    finally:
        torch.set_num_threads(previous)
    for threads, (first, second) in results.items():
        assert_bitwise(first, second)
    # And across the thread counts, here: sine's tensors are below torch's parallel grain and
    # the fused CPU kernels split work the same way whatever the thread count. (Not promised in
    # general: a large reduction may be split differently on more threads.)
    assert_bitwise(results[1][0], results[2][0])
    # Training changed the meta-parameters (the comparison is not of two untouched inits).
    assert results[1][0]["iteration"] == 6
