"""Distributed meta-training (learnedopt.distributed): 2 local processes on gloo, rendezvous on
127.0.0.1, each bounded by a timeout.

One job of 2 ranks (the ``job`` fixture, started the way torchrun starts its workers: RANK,
WORLD_SIZE, MASTER_ADDR, ... in the environment) runs several CLI commands; the tests compare its
run directories with the same commands run here in one process. The fault tests start jobs of
their own: a rank killed (SIGKILL) or hung mid-run, and a torchrun --max-restarts job whose rank
is killed once and which resumes.

Equivalence is to 1e-6 relative (max |a - b| / max |a| per tensor), not bitwise: each rank sums
its share of the tasks' gradients and the all_reduce adds the shares, a different order of the
float32 additions than one process summing all tasks (measured: about 1e-7). Evaluation is
bitwise: every fixed-task batch is evaluated whole by one rank, as one process would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from learnedopt import cli, distributed, train
from learnedopt.checkpoint import load_checkpoint
from learnedopt.evaluate import evaluate_checkpoint
from learnedopt.rundir import RunLock
from learnedopt.train import load_metrics

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 240  # a whole job; each command takes seconds, process start-up most of it

SINE = ["--task", "sine", "--shots", "5", "--queries", "5", "--meta-batch", "4", "--val-tasks",
        "20", "--log-every", "1", "--no-progress"]
TURTLE_SO = ["train", "--algorithm", "turtle", "--second-order", "--inner-steps", "2",
             "--iterations", "3", "--val-every", "3", *SINE]
METALSTM_FO = ["train", "--algorithm", "metalstm", "--first-order", "--inner-steps", "2",
               "--iterations", "6", "--val-every", "3", "--checkpoint-every", "2", *SINE]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               LEARNEDOPT_DIST_TIMEOUT="60", **extra)
    return env


def launch(report: Path, commands: list[list[str]], *, audit: Path | None = None,
           fault: list[str] = (), world: int = 2, timeout: float = JOB_TIMEOUT_S,
           stop_when_rank0_exits: bool = False) -> list[dict]:
    """Start ``world`` ranks of tests/distributed_worker.py as torchrun would; wait for them
    (or, with ``stop_when_rank0_exits``, for rank 0 only, killing the rest). Returns per rank:
    returncode, stderr, seconds until it exited, and its report (None if it wrote none)."""
    report.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "tests.distributed_worker", "--report", str(report), *fault]
    if audit is not None:
        argv += ["--audit", str(audit)]
    argv += [json.dumps(c) for c in commands]
    started = time.monotonic()
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=worker_env(
                                  RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                  LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(port)))
             for r in range(world)]
    results = []
    try:
        for rank, proc in enumerate(procs):
            if stop_when_rank0_exits and rank > 0:
                proc.kill()
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
            path = report / f"rank{rank}.json"
            results.append({"returncode": proc.returncode, "stderr": err,
                            "seconds": time.monotonic() - started, "exited_at": time.time(),
                            "report": json.loads(path.read_text()) if path.exists() else None})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def in_one_process(argv: list[str]) -> None:
    assert cli.main(argv) == 0


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = a.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_equivalent(single: Path, multi: Path, rel: float = 1e-6) -> None:
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(multi / "last.pt")
    assert a["iteration"] == b["iteration"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    errors = {name: relative_error(a["state_dict"][name], b["state_dict"][name])
              for name in a["state_dict"]}
    for name, error in errors.items():
        assert error <= rel, (name, error)
    # pytest -s shows how close (the README quotes it).
    print(f"\n{multi.name}: largest relative difference {max(errors.values()):.2g} "
          f"({max(errors, key=errors.get)}); bitwise equal: {max(errors.values()) == 0}")
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])  # the same tasks were drawn
    records_a, records_b = load_metrics(single), load_metrics(multi)
    assert [(r["iteration"], r["split"]) for r in records_a] == \
        [(r["iteration"], r["split"]) for r in records_b]
    for ra, rb in zip(records_a, records_b):
        for key in ("meta_loss", "loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=rel), (ra, rb)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One 2-rank job running every command the tests below inspect, and the same commands'
    single-process runs."""
    root = tmp_path_factory.mktemp("distributed")
    runs, single = root / "runs", root / "single"
    # A 1-process run that the job extends with 2 ranks (checkpoints change world size 1 -> 2).
    in_one_process([*TURTLE_SO, "--iterations", "2", "--out", str(runs / "grow")])
    commands = [
        [*TURTLE_SO, "--out", str(runs / "turtle")],
        [*METALSTM_FO, "--out", str(runs / "metalstm")],
        ["eval", "--checkpoint", str(runs / "turtle" / "last.pt"), "--tasks", "70", "--batch", "20",
         "--out", str(runs / "eval.json")],
        [*TURTLE_SO, "--meta-batch", "3", "--out", str(runs / "indivisible")],
        [*TURTLE_SO, "--out", str(runs / "grow"), "--resume"],
        [*TURTLE_SO, "--iterations", "2", "--out", str(runs / "shrink")],
        [*TURTLE_SO, "--seed", "${RANK}", "--out", str(runs / "mismatch")],
        # Stopped by the time limit: every rank must stop at the same iteration.
        [*METALSTM_FO, "--iterations", "1000000", "--val-every", "1000000", "--checkpoint-every",
         "1000000", "--time-limit", "4s", "--out", str(runs / "deadline")],
        # Its directory held by another run (this test process): refused on every rank.
        [*TURTLE_SO, "--out", str(runs / "locked")],
    ]
    # Buckets of 1000 elements: TURTLE's 5,303 meta-gradient elements on sine (with the loss and
    # metrics) go in 6 all_reduce calls.
    with RunLock(runs / "locked"):
        ranks = launch(root / "report", commands, audit=runs, fault=["--bucket", "1000"])
    for rank in ranks:
        assert rank["report"] is not None, rank["stderr"][-3000:]
    for name, argv in (("turtle", TURTLE_SO), ("metalstm", METALSTM_FO)):
        in_one_process([*argv, "--out", str(single / name)])
    return {"runs": runs, "single": single, "ranks": ranks}


def test_two_ranks_equal_one_process_second_order_turtle(job):
    assert job["ranks"][0]["report"]["codes"][0] == 0
    assert_equivalent(job["single"] / "turtle", job["runs"] / "turtle")


def test_two_ranks_equal_one_process_first_order_metalstm(job):
    assert job["ranks"][0]["report"]["codes"][1] == 0
    assert_equivalent(job["single"] / "metalstm", job["runs"] / "metalstm")


def test_only_rank_0_writes_and_the_job_is_recorded(job):
    rank0, rank1 = (r["report"]["writes"] for r in job["ranks"])
    assert rank1 == []
    written = " ".join(Path(path).name for _, path in rank0)
    # The audit sees rank 0's writes (so an empty list for rank 1 means something); files are
    # written as .NAME.*.tmp, then renamed (learnedopt.checkpoint.atomic_write_bytes).
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "eval.json"):
        assert name in written, name
    config = json.loads((job["runs"] / "turtle" / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert load_checkpoint(job["runs"] / "turtle" / "last.pt")["distributed"]["world_size"] == 2
    result = json.loads((job["runs"] / "eval.json").read_text())
    assert result["distributed"] == {"world_size": 2, "backend": "gloo"}


def test_sharded_evaluation_equals_one_process(job):
    sharded = json.loads((job["runs"] / "eval.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: a thread count can change a matmul's rounding
    try:
        single = evaluate_checkpoint(job["runs"] / "turtle" / "last.pt", num_tasks=70,
                                     batch_size=20)
    finally:
        torch.set_num_threads(threads)
    assert single["distributed"] == {"world_size": 1, "backend": None}
    assert sharded["metrics"] == single["metrics"]  # bitwise: the same batches, whole
    assert sharded["metrics"]["loss"]["tasks"] == 70  # 4 batches (20, 20, 20, 10), 2 per rank


def test_indivisible_meta_batch_is_refused(job):
    for rank in job["ranks"]:
        assert rank["report"]["codes"][3] == 1
        assert "meta-batch of 3 tasks cannot be split evenly over 2 processes" in rank["stderr"]
    assert not (job["runs"] / "indivisible" / "last.pt").exists()


def test_ranks_started_with_different_configurations_are_refused(job):
    for rank in job["ranks"]:
        assert rank["report"]["codes"][6] == 1
        assert ("rank 1 was started with another configuration than rank 0 (seed: 0 on rank 0, "
                "1 on rank 1)") in rank["stderr"]
    assert not (job["runs"] / "mismatch" / "last.pt").exists()


def test_every_rank_stops_at_the_same_iteration_on_the_time_limit(job):
    # A rank that stopped alone would leave the other waiting in an all_reduce until the
    # collective timeout (60 s here), and exit 1 with its error instead of 75.
    codes = [rank["report"]["codes"][7] for rank in job["ranks"]]
    assert codes == [75, 75], [rank["stderr"][-2000:] for rank in job["ranks"]]
    assert "time limit 4s reached: stopped at iteration" in job["ranks"][0]["stderr"]
    last = load_checkpoint(job["runs"] / "deadline" / "last.pt")
    assert 0 < last["iteration"] < 1000000
    assert f"stopped at iteration {last['iteration']} " in job["ranks"][1]["stderr"]


def test_a_run_directory_in_use_is_refused_on_every_rank(job):
    for rank in job["ranks"]:
        assert rank["report"]["codes"][8] == 1
        assert "is in use by another run (pid" in rank["stderr"], rank["stderr"][-2000:]
    assert not (job["runs"] / "locked" / "last.pt").exists()


def test_checkpoints_resume_under_another_world_size(job, tmp_path):
    assert job["ranks"][0]["report"]["codes"][4:6] == [0, 0]
    # 1 process for 2 iterations, then 2 ranks for the third (the job's "grow" run) ...
    assert_equivalent(job["single"] / "turtle", job["runs"] / "grow")
    # ... and 2 ranks for 2 iterations, then 1 process.
    shrink = tmp_path / "shrink"
    shutil.copytree(job["runs"] / "shrink", shrink)
    in_one_process([*TURTLE_SO, "--out", str(shrink), "--resume"])
    assert_equivalent(job["single"] / "turtle", shrink)


def test_each_rank_draws_its_own_random_stream_and_checkpoints_keep_them(job):
    """Dropout masks and any other global-RNG draw differ between ranks (as between the tasks of
    one process), and a checkpoint holds every rank's stream for --resume."""
    rng = load_checkpoint(job["runs"] / "turtle" / "last.pt")["rng"]
    ranks = rng["ranks"]
    assert len(ranks) == 2 and torch.equal(ranks[0]["torch"], rng["torch"])
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert load_checkpoint(job["single"] / "turtle" / "last.pt")["rng"]["ranks"] is None
    seeds = {train.rank_seed(0, rank, iteration) for rank in (1, 2, 3) for iteration in (0, 5)}
    assert len(seeds) == 6 and all(0 <= s < 2 ** 63 for s in seeds)


def test_each_rank_adapts_its_own_slice_of_the_meta_batch():
    from learnedopt.tasks.sine import SineTasks
    batch = SineTasks(5, 5).sample(6, torch.Generator().manual_seed(0))
    shards = [distributed.Context(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [s.num_tasks for s in shards] == [2, 2, 2]
    for name in ("x_support", "y_support", "x_query", "y_query"):
        assert torch.equal(torch.cat([getattr(s, name) for s in shards]), getattr(batch, name))
    assert distributed.Context().shard(batch) is batch  # one process: untouched
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        distributed.Context(world_size=4).shard(batch)


def test_refusals_without_processes():
    two = distributed.Context(rank=0, world_size=2, backend="gloo", timeout_s=1.0)
    assert two.device("cuda").index == 0 and two.device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="names one GPU"):
        two.device("cuda:1")
    with pytest.raises(ValueError, match="not a number of seconds"):
        os.environ[distributed.ENV_TIMEOUT] = "soon"
        try:
            distributed.timeout_seconds()
        finally:
            del os.environ[distributed.ENV_TIMEOUT]
    from learnedopt.algorithms import build_algorithm
    from learnedopt.learners import MLP
    with pytest.raises(ValueError, match="Theil penalty"):
        two.check_algorithm(build_algorithm("taml", MLP(), meta_batch_size=4))
    with pytest.raises(ValueError, match="flat batches"):
        two.check_algorithm(build_algorithm("finetune", MLP(), meta_batch_size=4))
    with pytest.raises(ValueError, match=r"--meta-batch 4 or 6"):
        distributed.Context(world_size=2).check_algorithm(
            build_algorithm("maml", MLP(), meta_batch_size=5))


def _fault_job(tmp_path, kind: str, timeout_s: int):
    """Rank 1 is killed or hangs in iteration 3; rank 0's result and how many seconds after the
    fault it exited."""
    run, struck = tmp_path / "run", tmp_path / "fault-struck"
    command = [*METALSTM_FO, "--iterations", "50", "--checkpoint-every", "1", "--out", str(run),
               "--dist-timeout", str(timeout_s)]
    ranks = launch(tmp_path / "report", [command], stop_when_rank0_exits=True,
                   fault=["--fault", kind, "--fault-rank", "1", "--fault-call", "3",
                          "--fault-once", str(struck)])
    return run, ranks[0], ranks[0]["exited_at"] - struck.stat().st_mtime


def test_a_killed_rank_stops_the_others_with_a_clear_error(tmp_path):
    run, rank0, after = _fault_job(tmp_path, "kill", 60)
    assert rank0["returncode"] == 1, rank0["stderr"][-3000:]
    assert after < 30  # the connection closes: no need to wait for the 60 s timeout
    assert "another rank died, hung or stopped" in rank0["stderr"]
    assert "all_reduce of the meta-gradients" in rank0["stderr"]
    # The checkpoints that were written are whole (atomic writes): the last one loads.
    assert load_checkpoint(run / "last.pt")["iteration"] == 2


def test_a_hung_rank_stops_the_others_within_the_timeout(tmp_path):
    run, rank0, after = _fault_job(tmp_path, "hang", 3)
    assert rank0["returncode"] == 1, rank0["stderr"][-3000:]
    assert "collective timeout 3 s" in rank0["stderr"]
    # Rank 1 sleeps for 600 s; rank 0 gives up after the 3 s timeout, plus its exit on a busy
    # machine (rank 0's wait may start a little before rank 1 marks the hang, hence not >= 3).
    assert 1 <= after < 30, after
    assert load_checkpoint(run / "last.pt")["iteration"] == 2


def test_torchrun_restart_after_a_killed_rank_equals_the_uninterrupted_run(job, tmp_path):
    """torchrun --max-restarts 1: rank 1 is killed in iteration 4 (last.pt holds iteration 2);
    torchrun restarts both ranks, --resume continues from last.pt, and the run ends bitwise as
    the job's uninterrupted 2-rank run."""
    run, marker = tmp_path / "run", tmp_path / "killed-once"
    command = [*METALSTM_FO, "--out", str(run), "--resume"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", "1", "--monitor-interval", "0.5", "-m", "tests.distributed_worker",
            "--report", str(tmp_path), "--fault", "kill", "--fault-rank", "1", "--fault-call", "4",
            "--fault-once", str(marker), json.dumps(command)]
    proc = subprocess.run(argv, cwd=REPO, env=worker_env(), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert marker.exists()  # the kill happened
    for rank in (0, 1):  # the restarted ranks finished their command
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["codes"] == [0]
    a, b = load_checkpoint(job["runs"] / "metalstm" / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert without_time(load_metrics(run)) == without_time(load_metrics(job["runs"] / "metalstm"))


def test_ranks_on_one_node_share_its_cores(monkeypatch):
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(cores + 1)  # neither the default nor the expected count
        distributed._share_cores(2)
        assert torch.get_num_threads() == max(1, cores // 2)
        torch.set_num_threads(cores + 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (or torchrun's) choice stands
        distributed._share_cores(2)
        assert torch.get_num_threads() == cores + 1
    finally:
        torch.set_num_threads(threads)
