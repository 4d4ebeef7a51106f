"""Content checksums (learnedopt.integrity): flipped bytes inside a checkpoint's or a rule file's
tensor data are refused, inside the image cache rebuilt; files from before checksums still load."""

from __future__ import annotations

import io
import math

import pytest
import torch

from learnedopt import integrity
from learnedopt.checkpoint import CheckpointError, load_checkpoint
from learnedopt.optim import TurtleOptimizer
from learnedopt.optim.pretrained import (PRETRAINED_DIR, PretrainedError, load_rule, save_rule,
                                         shipped_rules)
from learnedopt.rules import TurtleRule
from learnedopt.tasks.omniglot import load_omniglot_set
from learnedopt.train import TrainConfig, train
from tests.fewshot_data import tiny_omniglot  # noqa: F401 (fixture)
from tests.runner_tiny import tiny_registry  # noqa: F401 (fixture)


def flip_inside(path, tensor: torch.Tensor, count: int = 16) -> None:
    """Invert ``count`` bytes in the middle of ``tensor``'s raw data as stored in ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "tensor bytes not found exactly once"
    start = at + (len(raw) - count) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def tiny_run(tmp_path, tiny_registry):  # noqa: F811
    config = TrainConfig(algorithm="tiny", task={"name": "sine", "shots": 5, "queries": 5},
                         out=str(tmp_path / "run"), iterations=6, val_every=3, val_tasks=10,
                         eval_batch=10, log_every=3, seed=0, progress=False)
    return train(config)


def test_flipped_bytes_in_theta0_of_best_pt_are_refused(tmp_path, tiny_registry):  # noqa: F811
    run = tiny_run(tmp_path, tiny_registry)
    best = run / "best.pt"
    theta0 = load_checkpoint(best)["state_dict"]["theta0"]
    flip_inside(best, theta0)
    # The bytes changed but torch alone would read the file without complaint ...
    assert not torch.equal(torch.load(best, weights_only=True)["state_dict"]["theta0"], theta0)
    # ... the checksum refuses it, naming the file.
    with pytest.raises(CheckpointError, match=r"best\.pt' is corrupt: the SHA-256"):
        load_checkpoint(best)
    # So does every other reader of checkpoints (export to a rule file).
    with pytest.raises(PretrainedError, match="is corrupt"):
        load_rule(best)


def test_flipped_bytes_in_a_rule_file_are_refused(tmp_path):
    torch.manual_seed(0)
    rule = TurtleRule(hidden_size=8, num_hidden_layers=2)
    path = tmp_path / "rule.pt"
    save_rule(path, rule, alpha=torch.full((10,), 0.01))
    load_rule(path)  # intact: loads
    flip_inside(path, rule.weights[1].detach())
    with pytest.raises(PretrainedError, match=r"rule\.pt' is corrupt"):
        TurtleOptimizer.from_pretrained(path, [torch.zeros(3, requires_grad=True)])


def test_files_without_a_checksum_still_load_with_a_note(tmp_path, tiny_registry, capsys):  # noqa: F811
    run = tiny_run(tmp_path, tiny_registry)
    legacy = {k: v for k, v in torch.load(run / "best.pt", weights_only=True).items()
              if k != "checksum"}
    torch.save(legacy, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded["state_dict"]["theta0"], legacy["state_dict"]["theta0"])
    assert "has no content checksum" in capsys.readouterr().err


@pytest.mark.parametrize("name", shipped_rules())
def test_shipped_rule_files_carry_a_valid_checksum(name):
    blob = torch.load(PRETRAINED_DIR / f"{name}.pt", weights_only=True)
    assert integrity.verify(blob, name) == "ok"


def test_shipped_rules_exist():
    assert len(shipped_rules()) == 3


def test_the_digest_tells_apart_what_a_plain_encoding_would_confuse():
    digest = integrity.content_digest
    assert digest({"a": 1}) != digest({"a": 1.0}) != digest({"a": True})
    assert digest({"a": ["bc"]}) != digest({"a": ["b", "c"]})
    assert digest({"a": [1]}) != digest({"a": (1,)})
    assert digest({"t": torch.zeros(2, 3)}) != digest({"t": torch.zeros(3, 2)})
    assert digest({"t": torch.zeros(2)}) != digest({"t": torch.zeros(2, dtype=torch.float64)[:1]})
    assert digest({"x": math.nan}) == digest({"x": math.nan})
    # Independent of storage layout: a transposed copy of the same values hashes alike.
    t = torch.arange(6.0).reshape(2, 3)
    assert digest({"t": t}) == digest({"t": t.t().contiguous().t()})
    sealed = integrity.seal({"t": t, "n": 3})
    buffer = io.BytesIO()
    torch.save(sealed, buffer)
    buffer.seek(0)
    assert integrity.verify(torch.load(buffer, weights_only=True), "buffer") == "ok"
    sealed["n"] = 4
    with pytest.raises(integrity.IntegrityError, match="'buffer' is corrupt"):
        integrity.verify(sealed, "buffer")


def test_flipped_bytes_in_the_image_cache_are_rebuilt(tiny_omniglot, tmp_path, caplog):  # noqa: F811
    first = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    flip_inside(cache_file, first.images[len(first.images) // 2], count=64)
    assert not torch.equal(torch.load(cache_file, weights_only=True)["images"], first.images)
    with caplog.at_level("WARNING"):
        again = load_omniglot_set(tiny_omniglot["zips"], "images_evaluation", 28, tmp_path)
    assert torch.equal(again.images, first.images)
    assert any("is corrupt" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    # The rebuilt file is whole again.
    assert integrity.verify(torch.load(cache_file, weights_only=True), "cache") == "ok"
