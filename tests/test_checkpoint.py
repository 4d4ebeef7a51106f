"""Checkpoint files: atomic writes, weights_only loading, clear errors for wrong or corrupt files."""

from __future__ import annotations

import io
import os

import pytest
import torch

from learnedopt import checkpoint as ckpt
from learnedopt.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint


def make_checkpoint(value: float = 1.0) -> dict:
    return {"format": FORMAT, "algorithm": "turtle", "options": {"inner_steps": 5},
            "state_dict": {"theta0": torch.full((3,), value), "alpha": torch.rand(3),
                           "rule.weights.0": torch.randn(20, 3)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}]},
            "iteration": 7, "rng": {"torch": torch.get_rng_state()},
            "best": {"iteration": 5, "metric": "loss", "value": 0.5},
            "metrics": [{"iteration": 5, "split": "val", "loss": 0.5}]}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    original = make_checkpoint()
    save_checkpoint(path, original)
    # The file itself must load under the restricted unpickler, not only through our helper.
    raw = torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    for data in (raw, loaded):
        assert data.keys() == original.keys() | {"checksum"}  # learnedopt.integrity's
        for name, tensor in original["state_dict"].items():
            assert torch.equal(data["state_dict"][name], tensor)
        assert torch.equal(data["rng"]["torch"], original["rng"]["torch"])
        assert data["metrics"] == original["metrics"]
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"], "temporary file left behind"


def test_failure_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint(1.0))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # The crash hits after the temporary file was written and synced, just before the rename.
    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_checkpoint(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["state_dict"]["theta0"], torch.full((3,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failure_while_writing_bytes_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, make_checkpoint(1.0))
    before = path.read_bytes()
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(path, make_checkpoint(3.0))
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert calls, "the write path never synced the file"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_unserialisable_checkpoint_does_not_touch_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint(1.0))
    before = path.read_bytes()
    bad = make_checkpoint(2.0)
    bad["options"] = {"callback": lambda: None}  # cannot be pickled
    with pytest.raises(Exception):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_gives_clear_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(256),
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="not a readable learnedopt checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_format_and_missing_keys(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "learnedopt-rule/1", "kind": "turtle"}, path)
    with pytest.raises(CheckpointError, match="learned-rule file"):
        load_checkpoint(path)
    torch.save({"weight": torch.zeros(2)}, path)  # a plain state_dict
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)
    incomplete = make_checkpoint()
    del incomplete["state_dict"]
    torch.save(incomplete, path)
    with pytest.raises(CheckpointError, match="lacks the keys \\['state_dict'\\]"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="without \\['state_dict'\\]"):
        save_checkpoint(path, incomplete)


class NotAllowed:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    payload = make_checkpoint()
    payload["options"] = {"obj": NotAllowed()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not a learnedopt checkpoint: it asks to import "
                       "tests.test_checkpoint.NotAllowed.*refused for safety") as refused:
        load_checkpoint(path)
    # No advice to switch the safety check off (torch's own text suggests weights_only=False).
    assert "weights_only" not in str(refused.value)
    # ... because of weights_only, not because the class is unknown:
    assert isinstance(torch.load(path, weights_only=False)["options"]["obj"], NotAllowed)


def test_save_refuses_content_weights_only_cannot_load(tmp_path):
    path = tmp_path / "last.pt"
    payload = make_checkpoint()
    payload["options"] = {"obj": NotAllowed()}
    with pytest.raises(CheckpointError, match="Unsupported global.*NotAllowed"):
        save_checkpoint(path, payload)
    assert not path.exists()
