"""Data-parallel meta-training and evaluation on ``torch.distributed``, launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m learnedopt train --algorithm turtle --task sine --out runs/t

Every rank builds the same algorithm from the same seed, draws the *whole* meta-batch from the same
task generator and adapts only its own contiguous slice of it (:meth:`Context.shard`), so the union
over ranks is exactly the meta-batch one process would draw, whatever the world size; the sampler's
draw may depend on the batch size (SineTasks' does) without breaking that. The meta-gradients of
every trainable meta-parameter (theta_0, alpha, the rule's weights, ...) are then averaged with one
flattened ``all_reduce`` per iteration (:meth:`Context.average_gradients`, in buckets when large),
and every rank takes the identical outer step. No ``DistributedDataParallel``: it does not support
the double backward of second-order meta-gradients.

Validation and meta-test batches of fixed tasks are dealt out to the ranks and the per-task values
gathered (:meth:`Context.gather_per_task`), so the mean ± CI covers the same tasks as one process.
Only rank 0 writes (checkpoints, metrics, config.json, results); what a run must read at start
(a checkpoint to resume) is read by rank 0 and broadcast (:meth:`Context.from_writer`), so nodes
need not share a file system.

Every collective runs under the process group's timeout (``--dist-timeout`` /
``LEARNEDOPT_DIST_TIMEOUT``, default 300 s): a rank that dies or hangs makes the others stop with a
:class:`DistributedError` naming what failed, instead of waiting forever.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import os
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

ENV_TIMEOUT = "LEARNEDOPT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
# Largest all_reduce, in elements (32 MiB of float32): a meta-gradient longer than this (ResNet-12's
# theta_0 and alpha) goes in several buckets so no single message needs a huge staging buffer.
BUCKET_NUMEL = 1 << 23


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, hung, or stopped with an error."""


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands in the job. ``Context()`` is the single-process run, in which
    every method is the identity (no collective, no copy), so one process runs the code it always
    ran."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    timeout_s: float | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What config.json, checkpoints and result files record about the job."""
        return {"world_size": self.world_size, "backend": self.backend}

    # ---- devices ---------------------------------------------------------------------------
    def device(self, requested: str | torch.device) -> torch.device:
        """The device of this rank: "cuda" means cuda:LOCAL_RANK, one GPU per rank."""
        device = torch.device(requested)
        if not self.active or device.type != "cuda":
            return device
        if device.index is not None:
            raise ValueError(f"device {str(requested)!r} names one GPU, but each of the "
                             f"{self.world_size} ranks takes its own: give --device cuda and every "
                             f"rank uses cuda:LOCAL_RANK")
        return torch.device("cuda", self.local_rank)

    # ---- what a distributed run can do -------------------------------------------------------
    def check_algorithm(self, algorithm) -> None:
        """Refuse, before any work, what cannot be split over the ranks exactly."""
        if not self.active:
            return
        name = getattr(algorithm, "name", type(algorithm).__name__)
        if getattr(algorithm, "pretrains_flat", False):
            raise ValueError(f"{name} pre-trains on flat batches and keeps batch-norm running "
                             f"statistics that each rank would update on its own share: "
                             f"distributed training supports the episodic algorithms only; run "
                             f"it in one process")
        if getattr(algorithm, "outer_step", None) is not None:
            raise ValueError(f"{name} takes its own outer step (meta-RL: TRPO's line search, "
                             f"trajectories drawn from each process's RNG), which is not split "
                             f"over ranks: run it in one process")
        if getattr(algorithm, "_options", {}).get("penalty") == "theil":
            raise ValueError(f"{name}'s Theil penalty couples all the tasks of a meta-batch (it "
                             f"divides by their mean loss), so it cannot be computed per rank: "
                             f"use penalty=entropy or run in one process")
        batch = algorithm.meta_batch_size
        if batch % self.world_size:
            lower = batch - batch % self.world_size
            options = [n for n in (lower, lower + self.world_size) if n >= self.world_size]
            raise ValueError(
                f"the meta-batch of {batch} tasks cannot be split evenly over {self.world_size} "
                f"processes (each rank adapts meta_batch / world_size tasks): choose a meta-batch "
                f"divisible by {self.world_size} (e.g. --meta-batch "
                f"{' or '.join(map(str, options))}) or another number of processes")

    def check_same_config(self, config: dict[str, Any]) -> None:
        """Refuse, on every rank, a job whose ranks were started with different training
        configurations (a different --meta-batch on one node would silently average gradients
        of different problems). Where the run directory and the data live may differ per node."""
        if not self.active:
            return
        mine = dict(config)
        for key in ("out", "progress"):
            mine.pop(key, None)
        mine["task"] = {k: v for k, v in dict(mine.get("task") or {}).items()
                        if k not in ("data_root", "cache_dir")}
        everyone: list[Any] = [None] * self.world_size
        with self._collective("comparison of the ranks' configurations"):
            torch.distributed.all_gather_object(everyone, mine)
        for rank, other in enumerate(everyone):
            if other != everyone[0]:
                keys = sorted(k for k in set(other) | set(everyone[0])
                              if other.get(k) != everyone[0].get(k))
                details = ", ".join(f"{k}: {everyone[0].get(k)!r} on rank 0, "
                                    f"{other.get(k)!r} on rank {rank}" for k in keys)
                raise ValueError(f"rank {rank} was started with another configuration than rank "
                                 f"0 ({details}): start every rank with the same command")

    # ---- meta-training -----------------------------------------------------------------------
    def shard(self, batch):
        """This rank's contiguous slice of a batch of tasks (a TaskBatch or any dataclass of
        per-task tensors), tasks [rank * B/W, (rank + 1) * B/W)."""
        if not self.active:
            return batch
        total = batch.num_tasks
        if total % self.world_size:
            raise ValueError(f"a batch of {total} tasks cannot be split over {self.world_size} ranks")
        share = total // self.world_size
        start, stop = self.rank * share, (self.rank + 1) * share
        return type(batch)(*(value[start:stop] if isinstance(value, Tensor) else value
                             for value in (getattr(batch, f.name)
                                           for f in dataclasses.fields(batch))))

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter], loss: Tensor,
                          metrics: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
        """Average the ``.grad`` of ``parameters``, the meta-loss and the logged metrics over the
        ranks, in one flattened all_reduce (bucketed past BUCKET_NUMEL elements).

        Each rank's loss is the mean over its B/W tasks, so its gradient is (W/B) times the sum
        over them; the sum over ranks divided by W is (1/B) times the sum over all B tasks: the
        gradient of the single-process mean, up to the order of the additions. A parameter that
        got no gradient on some rank counts as zero there (that rank's tasks did not touch it); one
        that got none anywhere keeps ``grad = None``, as in one process (Adam then skips it).
        Returns the averaged loss (a detached tensor) and metrics."""
        if not self.active:
            return loss, metrics
        parameters = [p for p in parameters]
        grads = [p.grad for p in parameters]
        dtypes = {g.dtype for g in grads if g is not None} | {loss.dtype}
        dtype = torch.float64 if torch.float64 in dtypes else next(iter(dtypes))
        device = loss.device
        names = list(metrics)
        pieces = [g.reshape(-1).to(dtype) if g is not None
                  else torch.zeros(p.numel(), dtype=dtype, device=device)
                  for p, g in zip(parameters, grads)]
        pieces.append(torch.tensor([float(g is not None) for g in grads], dtype=dtype, device=device))
        pieces.append(loss.detach().reshape(1).to(dtype))
        pieces.append(torch.tensor([float(metrics[n]) for n in names], dtype=dtype, device=device))
        flat = torch.cat([piece.to(device) for piece in pieces])
        with self._collective("all_reduce of the meta-gradients"):
            for start in range(0, flat.numel(), BUCKET_NUMEL):
                torch.distributed.all_reduce(flat[start:start + BUCKET_NUMEL])
        flat /= self.world_size
        offset = 0
        chunks = []
        for p in parameters:
            chunks.append(flat[offset:offset + p.numel()])
            offset += p.numel()
        present = flat[offset:offset + len(parameters)]
        offset += len(parameters)
        for p, chunk, seen in zip(parameters, chunks, present.tolist()):
            if seen > 0:
                p.grad = chunk.view_as(p).to(device=p.device, dtype=p.dtype)
        averaged_loss = flat[offset].to(loss.dtype)
        values = flat[offset + 1:offset + 1 + len(names)].tolist()
        return averaged_loss, dict(zip(names, values))

    # ---- evaluation --------------------------------------------------------------------------
    def my_batches(self, batches: Iterable) -> Iterator[tuple[int, Any]]:
        """(index, batch) of the batches this rank evaluates: every world_size-th, from its rank.
        Each batch is evaluated whole, as one process would, so per-task values are bitwise those
        of a single process."""
        for index, batch in enumerate(batches):
            if index % self.world_size == self.rank:
                yield index, batch

    def all_gather(self, value: Any, what: str) -> list[Any]:
        """Every rank's (picklable) ``value`` in rank order, on every rank; [value] in one
        process. ``what`` names the collective in the error if another rank fails."""
        if not self.active:
            return [value]
        everyone: list[Any] = [None] * self.world_size
        with self._collective(what):
            torch.distributed.all_gather_object(everyone, value)
        return everyone

    def gather_per_task(self, mine: dict[int, dict[str, Tensor]]) -> dict[str, Tensor]:
        """Every rank's {batch index: {metric: (b,) values}} merged in batch order, on every rank:
        {metric: (num_tasks,)} exactly as one process would have collected them."""
        everyone = self.all_gather(mine, "gather of the evaluation results")
        merged = {index: values for part in everyone for index, values in part.items()}
        collected: dict[str, list[Tensor]] = {}
        for index in sorted(merged):
            for name, value in merged[index].items():
                collected.setdefault(name, []).append(value)
        return {name: torch.cat(chunks) for name, chunks in collected.items()}

    # ---- reading once, writing once -----------------------------------------------------------
    def from_writer(self, read: Callable[[], Any]) -> Any:
        """``read()`` on rank 0, its value broadcast to every rank; an exception it raises is
        raised on every rank (the same type where it is a builtin one), so that no rank waits for
        a rank that has stopped."""
        if not self.active:
            return read()
        message: list[Any] = [None]
        if self.is_writer:
            try:
                message[0] = ("value", read())
            except Exception as exc:  # noqa: BLE001 - re-raised below, and on every other rank
                message[0] = ("error", type(exc).__name__, str(exc))
                self._broadcast(message)
                raise
        self._broadcast(message)
        if message[0][0] == "error":
            _, kind, text = message[0]
            cls = getattr(__import__("builtins"), kind, None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RuntimeError
            raise cls(f"(rank 0) {text}")
        return message[0][1]

    def _broadcast(self, message: list[Any]) -> None:
        with self._collective("broadcast from rank 0"):
            torch.distributed.broadcast_object_list(message, src=0)

    def _collective_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only (each rank's own GPU); gloo CPU ones.
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true on any rank (one small all_reduce; the flags
        themselves in one process): how the ranks agree to stop at the same iteration."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        values = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32,
                              device=self._collective_device())
        with self._collective("agreement on stopping (signal or time limit)"):
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def barrier(self, what: str = "barrier") -> None:
        if self.active:
            with self._collective(what):
                torch.distributed.barrier()

    @contextlib.contextmanager
    def _collective(self, what: str):
        try:
            yield
        except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank died, hung or "
                f"stopped with an error (collective timeout {self.timeout_s:g} s; "
                f"--dist-timeout / {ENV_TIMEOUT} sets it). {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def timeout_seconds(timeout_s: float | None = None) -> float:
    """The collective timeout: ``timeout_s``, else $LEARNEDOPT_DIST_TIMEOUT, else 300 s."""
    if timeout_s is None:
        text = os.environ.get(ENV_TIMEOUT)
        if text is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(text)
        except ValueError:
            raise ValueError(f"{ENV_TIMEOUT}={text!r} is not a number of seconds") from None
    if not timeout_s > 0:
        raise ValueError(f"the collective timeout must be > 0 seconds, got {timeout_s}")
    return float(timeout_s)


_CURRENT = Context()


def current() -> Context:
    """The context of this process (set by :func:`init_from_env`; single process otherwise)."""
    return _CURRENT


def init_from_env(device: str | torch.device = "cpu", timeout_s: float | None = None) -> Context:
    """Join the job torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), once per process: gloo for CPU runs, NCCL for
    CUDA ones with this rank on cuda:LOCAL_RANK. Without WORLD_SIZE > 1 it is the single-process
    context and nothing is initialised. A process group the caller already initialised is used
    as it is."""
    global _CURRENT
    if _CURRENT.active:
        return _CURRENT
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        _CURRENT = _context(dist.get_rank(), dist.get_world_size(), dist.get_backend(),
                            timeout_seconds(timeout_s))
        return _CURRENT
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return _CURRENT
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} are not set: start the processes with "
                         f"torchrun (python3 -m torch.distributed.run), which sets them")
    rank = _env_int("RANK", 0)
    timeout = timeout_seconds(timeout_s)
    context = _context(rank, world, "nccl" if torch.device(device).type == "cuda" else "gloo",
                       timeout)
    if context.backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but this torch has no CUDA device")
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {context.local_rank} but this node has "
                             f"{torch.cuda.device_count()} GPU(s): start at most that many "
                             f"processes per node (--nproc-per-node)")
        torch.cuda.set_device(context.local_rank)
    _share_cores(context.local_world_size)
    try:
        dist.init_process_group(context.backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout),
                                store=_attempt_store(world, timeout))
    except RuntimeError as exc:
        raise DistributedError(f"rank {rank} of {world}: could not join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                               f"{timeout:g} s: {_first_line(exc)}") from exc
    atexit.register(_shutdown)
    _CURRENT = context
    return context


def _attempt_store(world: int, timeout: float):
    """Under torchrun the workers share the agent's TCP store, which outlives a restart
    (--max-restarts): the restarted ranks would find the dead ranks' gloo addresses still in it
    and fail to connect to them (seen with torch 2.13: "connectFullMesh failed ... Connection
    refused", in 2 of 5 restarts tried here). A key prefix per restart attempt keeps each attempt's
    addresses apart. Outside torchrun: None (init_process_group builds its own store)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=False, timeout=datetime.timedelta(seconds=timeout))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"learnedopt/{run}/attempt_{attempt}", store)


def _context(rank: int, world: int, backend: str, timeout: float) -> Context:
    return Context(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank),
                   local_world_size=_env_int("LOCAL_WORLD_SIZE", world), backend=str(backend),
                   timeout_s=timeout)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def _share_cores(local_world_size: int) -> None:
    """Ranks on one node share its cores: unless the user set OMP_NUM_THREADS (torchrun sets it to
    1 when it starts several processes), each takes cores // local_world_size threads, so the
    node is not oversubscribed local_world_size times over."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // max(1, local_world_size)))


def _shutdown() -> None:
    import torch.distributed as dist
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Context()
