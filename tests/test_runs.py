"""Run directories under concurrency and signals: one run per directory (two real processes),
SIGINT / SIGTERM and --time-limit stop with a checkpoint and a one-line resume message,
``--resume RUN_DIR`` continues from config.json, stale temporaries are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from learnedopt.checkpoint import load_checkpoint
from learnedopt.interrupts import RunInterrupted, TimeLimitReached, parse_duration
from learnedopt.rundir import RunDirectoryBusy, RunLock
from learnedopt.train import TrainConfig, load_metrics, resume, resume_config, train
from tests.runner_tiny import TinyMetaSGD, tiny_config, tiny_registry  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
LONG_RUN = ["train", "--algorithm", "metasgd", "--task", "sine", "--shots", "5", "--queries", "5",
            "--meta-batch", "2", "--iterations", "1000000", "--val-every", "100000",
            "--log-every", "5", "--checkpoint-every", "50", "--no-progress"]


def cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "learnedopt", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_training(run: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until ``proc`` holds the run directory's lock and has logged a train record since."""
    deadline = time.monotonic() + timeout
    logged = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        lock, metrics = run / ".lock", run / "metrics.jsonl"
        if logged is None:
            if lock.exists() and f'"pid": {proc.pid},' in lock.read_text():
                logged = metrics.read_text().count("\n") if metrics.exists() else 0
        elif metrics.exists() and metrics.read_text().count("\n") > logged:
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the training process did not start in time")


def config(out, **overrides) -> TrainConfig:
    return tiny_config(out, **overrides)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_run_is_refused_and_sigint_checkpoints(tmp_path):
    run = tmp_path / "run"
    first = cli(*LONG_RUN, "--out", str(run))
    try:
        wait_training(run, first)
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["command"].startswith("learnedopt train")
        # A resume while the first trains, and a fresh run into the same --out: refused at once,
        # naming the holder.
        for args in (["train", "--resume", str(run)], [*LONG_RUN, "--out", str(run)]):
            second = cli(*args)
            out, err = second.communicate(timeout=60)
            assert second.returncode == 1, err
            assert f"is in use by another run (pid {first.pid}" in err
            assert holder["started"] in err
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted at iteration ") and \
        lines[-1].endswith(f"; resume with: learnedopt train --resume {run}"), err
    iteration = int(lines[-1].split()[3])
    # The checkpoint of that very iteration, although checkpoint_every (50) may not divide it.
    assert load_checkpoint(run / "last.pt")["iteration"] == iteration
    assert (run / ".lock").read_text() == ""  # released cleanly: no holder left on record
    # --resume RUN_DIR alone continues from config.json; only resumable changes are accepted.
    extended = cli("train", "--resume", str(run), "--iterations", str(iteration + 7))
    out, err = extended.communicate(timeout=120)
    assert extended.returncode == 0, err
    assert load_checkpoint(run / "last.pt")["iteration"] == iteration + 7
    refused = cli("train", "--resume", str(run), "--seed", "5")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "may not change seed" in err, err
    refused = cli("train", "--resume", str(run), "--ways", "5")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "--ways would change it" in err, err


def test_sigterm_checkpoints_and_a_killed_holder_is_recovered(tmp_path):
    run = tmp_path / "run"
    first = cli(*LONG_RUN, "--out", str(run))
    try:
        wait_training(run, first)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143 and "Traceback" not in err
    assert "interrupted at iteration" in err and "(SIGTERM)" in err
    # kill -9: no chance to release; the kernel drops the flock, the record stays behind.
    second = cli("train", "--resume", str(run))
    try:
        wait_training(run, second)
        time.sleep(0.5)
        second.kill()
        second.communicate(timeout=30)
    finally:
        second.kill()
    assert json.loads((run / ".lock").read_text())["pid"] == second.pid
    third = cli("train", "--resume", str(run), "--time-limit", "1s")
    out, err = third.communicate(timeout=90)
    assert f"was last held by pid {second.pid}" in err and "taking it over" in err, err
    assert third.returncode == 75 and "time limit 1s reached" in err, err


def test_lock_in_process(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        assert lock.replaced is None
    with RunLock(tmp_path / "run"):  # released: free again
        pass
    # A run that fails before writing anything (here: an unknown algorithm) leaves no directory.
    with pytest.raises(ValueError):
        train(config(tmp_path / "typo", algorithm="no-such-algorithm"))
    assert not (tmp_path / "typo").exists()


def test_signal_stops_after_the_iteration_and_resumes_bitwise(tmp_path, monkeypatch,
                                                              tiny_registry):  # noqa: F811
    straight = train(config(tmp_path / "straight"))
    real = TinyMetaSGD.meta_loss

    def signalled(self, batch):
        if self.calls == 9:  # during iteration 10
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch)

    monkeypatch.setattr(TinyMetaSGD, "meta_loss", signalled)
    with pytest.raises(RunInterrupted, match="interrupted at iteration 10 .SIGINT.; resume with: "
                                             "learnedopt train --resume ") as stop:
        train(config(tmp_path / "split"))
    assert stop.value.exit_code == 130 and stop.value.iteration == 10
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 10
    monkeypatch.setattr(TinyMetaSGD, "meta_loss", real)
    resumed = resume(tmp_path / "split")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert same_state(a["state_dict"], b["state_dict"])
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in load_metrics(straight)] == \
        [{k: v for k, v in r.items() if k != "elapsed_s"} for r in load_metrics(resumed)]


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch,
                                                                    tiny_registry):  # noqa: F811
    real = TinyMetaSGD.meta_loss

    def twice(self, batch):
        if self.calls == 9:  # during iteration 10; the last checkpoint is iteration 8's
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch)

    monkeypatch.setattr(TinyMetaSGD, "meta_loss", twice)
    with pytest.raises(RunInterrupted, match=r"interrupted again: stopped at once, without a new "
                                             r"checkpoint \(the last good checkpoints?: .*last.pt' "
                                             r"\(iteration 8\)") as stop:
        train(config(tmp_path / "run", checkpoint_every=4))
    assert stop.value.exit_code == 130
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 8
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_time_limit_stops_with_a_checkpoint_before_the_deadline(tmp_path, monkeypatch,
                                                                tiny_registry):  # noqa: F811
    real = TinyMetaSGD.meta_loss

    def slow(self, batch):
        time.sleep(0.05)
        return real(self, batch)

    monkeypatch.setattr(TinyMetaSGD, "meta_loss", slow)
    began = time.monotonic()
    with pytest.raises(TimeLimitReached, match="time limit 1.5s reached: stopped at iteration"):
        train(config(tmp_path / "run", iterations=10_000, val_every=10_000), time_limit=1.5)
    assert time.monotonic() - began < 1.5
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert 5 <= last["iteration"] < 30


def test_resume_config_accepts_only_resumable_changes(tmp_path, tiny_registry):  # noqa: F811
    train(config(tmp_path / "run", iterations=6))
    assert resume_config(tmp_path / "run", iterations=9).iterations == 9
    with pytest.raises(ValueError, match="may not change seed"):
        resume_config(tmp_path / "run", seed=1)
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        resume_config(tmp_path / "nothing")


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path, tiny_registry, capsys):  # noqa: F811
    run = train(config(tmp_path / "run", iterations=6))
    stale = [run / ".last.pt.abc123.tmp", run / ".best.pt.x.tmp", run / ".metrics.jsonl.q.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    other = run / "notes.tmp"  # not ours: kept
    other.write_text("mine")
    train(config(tmp_path / "run", iterations=9), resume=True)
    assert not any(p.exists() for p in stale) and other.exists()
    assert "removed 3 temporary file(s)" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400),
                                           ("45s", 45), ("3600", 3600), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "2x", "h", "5m3", "nan"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)
