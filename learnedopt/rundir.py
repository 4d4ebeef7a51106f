"""One run per run directory: an exclusive lock held for the run's life, and the cleanup of what a
killed run left behind.

:class:`RunLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN/.lock`` and writes the
holder's pid, host, start time and command into it. A second run into the same directory (a new
``learnedopt train`` or a ``--resume`` while the first still trains) fails at once with
:class:`RunDirectoryBusy`, naming the holder. The kernel drops a flock when its holder dies, even
by ``kill -9``, so a lock is never left stale: the next run takes it and reports the dead holder
it replaces. The lock file is never deleted (deleting it would let two runs lock two different
files of the same name); a cleanly ended run empties it.

Limits: flock is advisory (only learnedopt takes it) and per host on some network file systems
(old NFS setups lock locally only); where ``fcntl`` does not exist (Windows) no lock is taken and
a warning says so.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
# The files the training loop writes with learnedopt.checkpoint.atomic_write_bytes, whose
# temporaries (".NAME.<random>.tmp") a kill during the write leaves behind.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json")


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` exclusively (creating the directory).

    Raises :class:`RunDirectoryBusy` if another process holds it, and ``OSError`` with a clear
    message if the directory cannot be created or written."""

    def __init__(self, run_dir: str | os.PathLike, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else _this_command()
        self._fd: int | None = None
        self.created = False  # whether acquire() made the directory
        self.replaced: dict[str, Any] | None = None  # the dead holder's record, if one was left

    def acquire(self) -> "RunLock":
        try:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot use {str(self.run_dir)!r} as a run directory: "
                                     f"{exc.strerror}") from None
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn("no fcntl on this platform: the run directory is not locked, so two "
                          "runs into it are not prevented", RuntimeWarning, stacklevel=2)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise RunDirectoryBusy(f"{str(self.run_dir)!r} is in use by another run "
                                       f"({describe_holder(holder)}); wait for it to end, or "
                                       f"choose another output directory") from None
            except OSError as exc:
                os.close(fd)
                raise OSError(exc.errno, f"cannot lock {str(self.path)!r}: {exc.strerror}") from None
        # A record left in the file is that of a holder that died without releasing it.
        self.replaced = _read_record(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": self.command}
        try:
            _write_record(fd, record)
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"cannot write to the run directory {str(self.run_dir)!r}: "
                                     f"{exc.strerror}") from None
        self._fd = fd
        if self.replaced:
            print(f"learnedopt: note: {str(self.run_dir)!r} was last held by "
                  f"{describe_holder(self.replaced)}, which ended without releasing it (killed?); "
                  f"taking it over", file=sys.stderr)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # a clean end leaves no record to report as a dead holder
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self.created:  # a run that failed before writing anything leaves no empty directory
            try:
                if [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                    self.path.unlink()
                    self.run_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _this_command() -> str:
    argv = list(sys.argv)
    if argv and (argv[0].endswith("__main__.py") or Path(argv[0]).name == "learnedopt"):
        argv[0] = "learnedopt"  # python -m learnedopt, or the console script
    return shlex.join(argv)


def describe_holder(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that has not yet recorded itself"
    parts = [f"pid {record.get('pid')}"]
    if record.get("host"):
        parts.append(f"on {record['host']}")
    if record.get("started"):
        parts.append(f"started {record['started']}")
    text = " ".join(parts)
    return f"{text}: {record['command']}" if record.get("command") else text


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes of the run's own files (call with the
    lock held: then no write of this run directory is in progress). Returns what was removed."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def _read_record(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {"pid": "unknown (unreadable lock record)"}


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
