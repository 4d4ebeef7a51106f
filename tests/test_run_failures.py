"""Bad numbers and bad places: a non-finite loss or meta-parameter stops the run with one line
naming a checkpoint that exists and never overwrites a good one; divergence is warned about; NaN
in the data (training and validation); unusable --out; incomplete checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnedopt import train as train_module
from learnedopt.checkpoint import CheckpointError, load_checkpoint, require_keys, save_checkpoint
from learnedopt.tasks.sine import SineTasks
from learnedopt.train import TrainConfig, load_metrics, train
from tests.runner_tiny import TinyMetaSGD, tiny_config, tiny_registry  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_registry")
REPO = Path(__file__).resolve().parents[1]


def config(out, **overrides) -> TrainConfig:
    # Validation every 4 and a checkpoint every iteration: failures land between checkpoints.
    return tiny_config(out, **{"val_every": 4, "log_every": 2, "checkpoint_every": 1, **overrides})


def snapshot(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}


def test_non_finite_meta_loss_names_the_checkpoints_that_exist(tmp_path, monkeypatch):
    real = TinyMetaSGD.meta_loss

    def nan_at_10(self, batch):
        loss, metrics = real(self, batch)
        return (loss * float("nan") if self.calls == 10 else loss), metrics

    monkeypatch.setattr(TinyMetaSGD, "meta_loss", nan_at_10)
    with pytest.raises(FloatingPointError) as error:
        train(config(tmp_path / "run"))
    message = str(error.value)
    assert "the meta-loss became nan at iteration 10" in message
    assert f"{str(tmp_path / 'run' / 'last.pt')!r} (iteration 9)" in message
    assert f"{str(tmp_path / 'run' / 'best.pt')!r} (iteration 8)" in message
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 9


def test_a_step_that_makes_meta_parameters_non_finite_is_never_saved(tmp_path, monkeypatch):
    real_step = torch.optim.Adam.step
    steps = []

    def poisoned_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 8:  # the outer step of iteration 8 (a validation iteration) makes
            with torch.no_grad():  # theta0 NaN although that iteration's loss was finite
                self.param_groups[0]["params"][0][0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    with pytest.raises(FloatingPointError, match=r"the outer step made the meta-parameters "
                                                 r"\['theta0'\] non-finite .NaN or Inf. at "
                                                 r"iteration 8"):
        train(config(tmp_path / "run"))
    last, best = (load_checkpoint(tmp_path / "run" / n) for n in ("last.pt", "best.pt"))
    assert last["iteration"] == 7 and best["iteration"] == 4
    for checkpoint in (last, best):
        assert all(bool(v.isfinite().all()) for v in checkpoint["state_dict"].values()
                   if v.is_floating_point())


def test_the_cli_reports_bad_numbers_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "learnedopt", "train", "--algorithm", "maml", "--task", "sine",
         "--opt", "outer_lr=1000", "--iterations", "50", "--val-every", "50", "--checkpoint-every",
         "1", "--out", str(run), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("learnedopt train: error: the meta-loss became") or \
        first.startswith("learnedopt train: error: the outer step made"), proc.stderr
    # It names a checkpoint that exists (its iteration), or says that none does.
    if "no checkpoint was written yet" not in first:
        named = first.split("the last good checkpoint")[1].split("'")[1]
        assert Path(named).is_file()


def test_divergence_is_warned_about(tmp_path, capsys):
    train(config(tmp_path / "inner", iterations=4, options={"inner_lr": 1e4}))
    assert "the inner loop diverges (try a lower inner learning rate)" in capsys.readouterr().err
    train(config(tmp_path / "fine", iterations=4))
    assert "diverg" not in capsys.readouterr().err


def test_outer_divergence_rule(tmp_path, monkeypatch, capsys):
    real = train_module.evaluate_tasks
    scores = iter([1.0, 10.0, 2e6])

    def growing(algorithm, sampler, split, num_tasks, batch_size, seed, steps=None):
        if steps == 0:
            return real(algorithm, sampler, split, num_tasks, batch_size, seed, steps)
        return {"loss": torch.full((num_tasks,), next(scores))}

    monkeypatch.setattr(train_module, "evaluate_tasks", growing)
    train(config(tmp_path / "run", iterations=12))
    err = capsys.readouterr().err
    assert "validation loss 2e+06 at iteration 12 is more than 1e+06 times the first " \
           "validation's (1)" in err


def test_nan_in_training_data_stops_with_a_clear_error(tmp_path, monkeypatch):
    real = SineTasks.sample
    calls = []

    def nan_data(self, batch_size, generator):
        batch = real(self, batch_size, generator)
        if batch_size != 4:  # validation tasks come from sample() too (eval_batch 10)
            return batch
        calls.append(1)
        if len(calls) == 6:
            batch.y_query[0, 0] = float("nan")
        return batch

    monkeypatch.setattr(SineTasks, "sample", nan_data)
    with pytest.raises(FloatingPointError, match="meta-loss became nan at iteration 6.*check the "
                                                 "data for NaN"):
        train(config(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 5


def test_nan_in_validation_data_is_recorded_and_never_best(tmp_path, monkeypatch, capsys):
    real = SineTasks.fixed_tasks
    validations = []

    def nan_val(self, split, num_tasks, batch_size, seed):
        validations.append(1)
        for i, batch in enumerate(real(self, split, num_tasks, batch_size, seed)):
            if len(validations) == 1 and i == 0:  # the first validation (best is None there)
                batch.y_query[2, 0] = float("nan")
            yield batch

    monkeypatch.setattr(SineTasks, "fixed_tasks", nan_val)
    run = train(config(tmp_path / "run", iterations=12))
    val = [r for r in load_metrics(run) if r["split"] == "val"]
    assert val[0]["non_finite_tasks"] == {"loss": 1} and val[0]["best"] is False
    assert val[0]["loss"] != val[0]["loss"]  # NaN
    # Later (finite) validations still compete for best.pt; a NaN first one would have frozen it.
    assert val[1]["best"] is True
    assert load_checkpoint(run / "best.pt")["best"]["iteration"] in (8, 12)
    assert "non-finite on 1 of 20 tasks" in capsys.readouterr().err


def test_unusable_out_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot use .*a-file.* as a run directory"):
        train(config(blocker))
    with pytest.raises(OSError, match="cannot use .*as a run directory"):
        train(config(blocker / "run"))
    assert blocker.read_text() == "not a directory"
    # A missing --out (and missing parents) is created.
    run = train(config(tmp_path / "new" / "deeper" / "run", iterations=2))
    assert (run / "last.pt").is_file()


def _refuse_writes_under(monkeypatch, directory: Path) -> None:
    """What a read-only directory does to a process, for root (CI runs as root, and root writes
    into a chmod 0555 directory): every open for writing and every file creation under
    ``directory`` fails with EACCES."""
    import builtins
    import errno
    real_os_open, real_open = os.open, builtins.open
    inside = lambda path: str(Path(os.fsdecode(path)).absolute()).startswith(str(directory))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def denied(path):
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & write_flags and inside(path):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)


def test_read_only_run_directory_is_refused_and_untouched(tmp_path, monkeypatch):
    run = train(config(tmp_path / "run", iterations=4))
    before = snapshot(run)
    run.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode: refuse its writes as the kernel would a user's
        _refuse_writes_under(monkeypatch, run)
    try:
        with pytest.raises(OSError, match="run directory"):
            train(config(run, iterations=8), resume=True)
    finally:
        monkeypatch.undo()
        run.chmod(0o755)
    assert snapshot(run) == before


def test_a_checkpoint_without_learner_names_the_key_and_the_file(tmp_path):
    run = train(config(tmp_path / "run", iterations=4))
    checkpoint = load_checkpoint(run / "best.pt")
    del checkpoint["learner"]
    save_checkpoint(tmp_path / "partial.pt", checkpoint)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "learnedopt", "eval", "--checkpoint",
                           str(tmp_path / "partial.pt"), "--tasks", "5"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{str(tmp_path / 'partial.pt')!r} lacks the key 'learner'" in proc.stderr
    with pytest.raises(CheckpointError, match="lacks the keys 'optimizer', 'rng'"):
        require_keys({}, ("optimizer", "rng"), "x.pt", "resume")
