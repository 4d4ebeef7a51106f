"""One rank of the distributed tests (tests/test_distributed.py): runs ``learnedopt`` CLI commands
in a process that torchrun, or the test itself, started with RANK / WORLD_SIZE / MASTER_ADDR / ...
in its environment, optionally injecting a fault and auditing the files the rank writes.

    python3 -m tests.distributed_worker --report DIR [--audit ROOT] [--bucket N] [--fault kill|hang
        --fault-rank R --fault-call N [--fault-once MARKER]] CMD1_JSON CMD2_JSON ...

Each CMD_JSON is the argv of one ``learnedopt`` command ("${RANK}" in it stands for the rank's
number); the commands run one after the other and
their exit codes go to DIR/rank<R>.json, with the write operations seen under ROOT (Python audit
events: opening for writing, creating, renaming, deleting), so that a test sees exactly which
rank touched the run directories. A fault makes rank R, at its N-th meta_loss call, kill itself
(SIGKILL: no clean-up of any kind) or hang (sleep); with --fault-once only if MARKER does not
exist yet (it is created first: its time is when the fault struck), so a restarted job runs
clean. --bucket N makes the meta-gradient all_reduce go in buckets of N elements.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def _audit(root: Path, events: list):
    root_text = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                      else bool((flags or 0) & write_flags))
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir"):
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            text = os.fsdecode(path)
            if text.startswith(root_text):
                events.append([event, text])
    sys.addaudithook(hook)


def _inject(kind: str, fault_rank: int, fault_call: int, marker: str | None) -> None:
    from learnedopt.algorithms.episodic import EpisodicAlgorithm
    original = EpisodicAlgorithm.meta_loss
    rank = int(os.environ.get("RANK", "0"))
    calls = [0]

    def meta_loss(self, batch):
        calls[0] += 1
        if rank == fault_rank and calls[0] == fault_call:
            if marker is None or not os.path.exists(marker):
                if marker is not None:
                    Path(marker).touch()
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(600)  # "hang": far beyond any collective timeout of the tests
        return original(self, batch)

    EpisodicAlgorithm.meta_loss = meta_loss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--audit")
    parser.add_argument("--fault", choices=("kill", "hang"))
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--fault-call", type=int, default=1)
    parser.add_argument("--fault-once")
    parser.add_argument("--bucket", type=int, help="all_reduce bucket size in elements")
    parser.add_argument("commands", nargs="*")
    args = parser.parse_args()
    events: list = []
    if args.audit:
        _audit(Path(args.audit).resolve(), events)
    if args.fault:
        _inject(args.fault, args.fault_rank, args.fault_call, args.fault_once)
    from learnedopt import cli, distributed
    if args.bucket:
        distributed.BUCKET_NUMEL = args.bucket
    rank = os.environ.get("RANK", "0")
    # "${RANK}" in a command stands for this rank's number (a command that differs per rank).
    codes = [cli.main([a.replace("${RANK}", rank) for a in json.loads(command)])
             for command in args.commands]
    report = Path(args.report) / f"rank{rank}.json"
    report.write_text(json.dumps({"codes": codes, "writes": events}))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
