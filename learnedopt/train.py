"""The meta-training loop: ``train(TrainConfig(...)) -> run directory``.

A run directory holds::

    config.json     the TrainConfig
    metrics.jsonl   one JSON record per line: {"split": "train", ...} every ``log_every``
                    iterations, {"split": "val", ...} every ``val_every``
    last.pt         the latest checkpoint (learnedopt.checkpoint), every ``checkpoint_every``
    best.pt         the whole algorithm state at the best validation score

Resuming (``train(config, resume=True)``, or :func:`resume` from the run directory alone)
restores the model, the outer optimizer, the iteration, the task generator and the torch RNG
(every rank's, under torchrun), so on the CPU a run interrupted and resumed is bitwise the run
that was never interrupted.

One run at a time owns a run directory (learnedopt.rundir: a lock held for the run's life; a
second run into it is refused naming the holder). SIGINT / SIGTERM and ``time_limit`` stop the
run at the end of an iteration with a checkpoint (learnedopt.interrupts). A non-finite meta-loss
or meta-parameter stops it with FloatingPointError before anything non-finite is written.

Under torchrun the same loop runs data-parallel: each rank adapts its share of every meta-batch,
the meta-gradients are averaged over the ranks and only rank 0 writes (learnedopt.distributed).

A user's own model and tasks: :func:`meta_train` (``meta_train(model, tasks, algorithm="maml",
out=...)``), or ``train(config, model=..., tasks=...)`` with the specs of learnedopt.experiment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import learnedopt
from learnedopt import distributed, experiment, interrupts, ops
from learnedopt.checkpoint import (FORMAT, atomic_write_bytes, load_checkpoint, require_keys,
                                   save_checkpoint)
from learnedopt.evaluate import evaluate_tasks, format_value, summarize
from learnedopt.rundir import RunLock, remove_stale_temporaries

# Divergence warnings (a documented rule, for loss metrics): the first validation's loss after
# adaptation more than INNER_DIVERGENCE times the same tasks' loss without adaptation (the inner
# loop blows up: inner_lr too large), or a later validation loss more than OUTER_DIVERGENCE times
# the run's first (the meta-parameters blow up: outer_lr too large).
INNER_DIVERGENCE = 1e3
OUTER_DIVERGENCE = 1e6


@dataclasses.dataclass
class TrainConfig:
    algorithm: str
    task: dict[str, Any]                      # experiment.build_sampler spec ("custom": user tasks)
    out: str                                  # run directory
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # over the task defaults
    learner: dict[str, Any] | None = None     # learner spec ("module": a user nn.Module); None:
                                              # the paper's learner for the task
    iterations: int = 1000
    val_every: int = 500
    val_tasks: int = 100
    eval_batch: int = 25                      # tasks per adapt_and_evaluate call
    log_every: int = 50
    checkpoint_every: int | None = None       # None: at every validation
    flat_batch: int | None = None             # pretrains_flat algorithms; None: meta_batch_size
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    progress: bool | None = None              # None: a bar on a terminal, val lines otherwise
    # The --protocol whose settings filled task, options and the run lengths: a record of where
    # they came from (the settings themselves are in the fields above), None without one.
    protocol: str | None = None

    # Fields a resumed run may change: how long, where, how shown, and the backend (fused and
    # reference kernels agree to rounding; bitwise equality holds only on the same one).
    RESUMABLE_CHANGES = ("iterations", "progress", "out", "backend")

    def validate(self) -> None:
        for name in ("iterations", "val_every", "val_tasks", "eval_batch", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}")
        for name in ("checkpoint_every", "flat_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be a positive integer or None, got {value!r}")
        if self.protocol is not None and not isinstance(self.protocol, str):
            raise ValueError(f"protocol must be a protocol name or None, got {self.protocol!r}")
        if self.backend not in ops.BACKENDS:
            raise ValueError(f"TrainConfig.backend must be one of {ops.BACKENDS}, got {self.backend!r}")
        if self.task.get("name") not in experiment.TASKS:
            raise ValueError(f"TrainConfig.task['name'] must be one of {experiment.TASKS}, got "
                             f"{self.task.get('name')!r}")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but this torch has no CUDA device")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "distributed"}  # config.json's job record
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**data)


def rank_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of rank ``rank``'s own global-RNG stream in a job of several ranks, started at
    ``iteration`` (0, or where a job of another world size resumed)."""
    digest = hashlib.sha256(f"learnedopt rank {rank} seed {seed} iteration {iteration}".encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1  # torch.manual_seed takes < 2^63


def meta_optimizer(parameters, lr: float) -> torch.optim.Adam:
    """The outer-loop Adam. foreach=True updates all meta-parameters with one batched op per step
    on the CPU too, where torch's default is a loop over the tensors: measured on 2 cores, 0.17 vs
    0.24 ms per step for sine TURTLE's meta-parameters, 0.29 vs 1.03 ms for Omniglot TURTLE's. It
    gives bitwise the same parameters as that loop; fused=True would not."""
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


def train(config: TrainConfig, resume: bool = False, *, model=None, tasks=None, loss=None,
          metrics=None, time_limit: float | str | None = None) -> Path:
    """Meta-train as ``config`` says; returns the run directory. ``resume`` continues the run in
    ``config.out`` from its last.pt (only the fields in ``TrainConfig.RESUMABLE_CHANGES`` may
    differ from the recorded run's).

    ``model`` (an ``nn.Module`` or a learner) and ``tasks`` (a sampler) stand in for what the
    learner and task specs would import; ``loss`` / ``metrics`` for a module learner's functions
    that could not be recorded as import paths. Give them again to resume such a run.

    ``time_limit`` (seconds, or "2h", "90m", ...): stop before it with a checkpoint, raising
    :class:`learnedopt.interrupts.TimeLimitReached`. SIGINT / SIGTERM (main thread) stop at the
    end of the current iteration with a checkpoint, raising
    :class:`learnedopt.interrupts.RunInterrupted` (a KeyboardInterrupt). Either says how to
    resume. Another run holding ``config.out`` raises :class:`learnedopt.rundir.RunDirectoryBusy`.
    """
    config.validate()
    if isinstance(time_limit, str):
        deadline = interrupts.Deadline(interrupts.parse_duration(time_limit), time_limit)
    else:
        deadline = None if time_limit is None else interrupts.Deadline(time_limit)
    job = distributed.init_from_env(config.device)  # under torchrun: join the job (else nothing)
    with contextlib.ExitStack() as held, ops.use_backend(config.backend):
        def take_run_directory():
            # Rank 0 owns the run directory for the job (the other ranks write nothing); its
            # refusal (another run holds it) is raised on every rank.
            held.enter_context(RunLock(config.out))
            return remove_stale_temporaries(config.out)
        removed = job.from_writer(take_run_directory)
        if removed and job.is_writer:
            print(f"learnedopt: note: removed {len(removed)} temporary file(s) left in "
                  f"{config.out!r} by an interrupted write ({', '.join(p.name for p in removed)})",
                  file=sys.stderr)
        trainer = _Trainer(config, resume, objects={"model": model, "tasks": tasks, "loss": loss,
                                                    "metrics": metrics})
        return trainer.run(deadline)


def resume_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The recorded configuration of the run in ``run_dir`` (its config.json), with ``changes``
    applied; only fields in ``TrainConfig.RESUMABLE_CHANGES`` may change."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} holds no config.json: not a learnedopt run "
                                f"directory (or the run never started)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable training config: {exc}") from None
    config = TrainConfig.from_dict(data)
    refused = sorted(k for k in changes if k not in TrainConfig.RESUMABLE_CHANGES)
    if refused:
        raise ValueError(f"a resumed run may not change {', '.join(refused)} (the recorded run "
                         f"has {', '.join(f'{k}={getattr(config, k, None)!r}' for k in refused)}); "
                         f"only {list(TrainConfig.RESUMABLE_CHANGES)} may change")
    config = dataclasses.replace(config, **changes)
    config.out = str(run_dir)
    return config


def resume(run_dir: str | os.PathLike, *, time_limit: float | str | None = None, model=None,
           tasks=None, loss=None, metrics=None, **changes: Any) -> Path:
    """Continue the run in ``run_dir`` from its recorded config.json and last.pt (``learnedopt
    train --resume RUN_DIR``); ``changes``: resumable fields, e.g. ``iterations=40000``."""
    return train(resume_config(run_dir, **changes), resume=True, model=model, tasks=tasks,
                 loss=loss, metrics=metrics, time_limit=time_limit)


def meta_train(model, tasks, *, algorithm: str, out: str | os.PathLike, loss=None, metrics=None,
               head: str | None = None, task_family: str | None = None, batching: str = "auto",
               model_kwargs: dict[str, Any] | None = None, tasks_kwargs: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None, resume: bool = False,
               time_limit: float | str | None = None, **run: Any) -> Path:
    """Meta-train ``algorithm`` on a user's model and tasks; returns the run directory (the same
    run directory, checkpoints, metrics and resume as ``learnedopt train``).

    ``model``: an ``nn.Module``, a learner (``learnedopt.learners.from_module(...)``), or the import
    path of a factory ("mypkg.nets:resnet12", called with ``model_kwargs``); ``loss`` (default:
    MSE or cross-entropy after the tasks' kind), ``metrics``, ``head``, ``task_family``,
    ``batching``: as :class:`learnedopt.module_learner.ModuleLearner`'s; ``time_limit``: as
    :func:`train`'s. ``tasks``: a sampler
    (see learnedopt.tasks) or the import path of a factory (called with ``tasks_kwargs``). With
    import paths the run directory alone rebuilds everything (``learnedopt eval``, ``--resume``);
    with objects, pass them again. ``options``: the algorithm's (over the SPEC defaults); ``run``:
    any other :class:`TrainConfig` field (iterations, val_every, seed, device, backend, ...).
    """
    from learnedopt.learners import Learner
    from learnedopt.module_learner import ModuleLearner
    model_object = None if isinstance(model, str) else model
    if isinstance(model_object, Learner):
        if loss is not None or head is not None:
            raise ValueError("meta_train: loss= and head= describe an nn.Module; the learner "
                             "given already has them")
        learner_spec = model_object.config()
    else:
        if model_object is not None and isinstance(loss, str):
            ModuleLearner(model_object, loss=loss, head=head)  # refuse a bad module before any run
        learner_spec = {"name": "module", "factory": model if isinstance(model, str) else None,
                        "kwargs": dict(model_kwargs or {}),
                        "loss": loss if isinstance(loss, str) else ("auto" if loss is None else None),
                        "head": head, "task_family": task_family, "batching": batching}
    task_spec = {"name": "custom", "factory": tasks if isinstance(tasks, str) else None,
                 "kwargs": dict(tasks_kwargs or {})}
    config = TrainConfig(algorithm=algorithm, task=task_spec, out=str(out),
                         options=dict(options or {}), learner=learner_spec, **run)
    return train(config, resume=resume, model=model_object,
                 tasks=None if isinstance(tasks, str) else tasks,
                 loss=None if (loss is None or isinstance(loss, str)) else loss, metrics=metrics,
                 time_limit=time_limit)


class _Trainer:
    def __init__(self, config: TrainConfig, resume: bool, objects: dict[str, Any] | None = None):
        objects = objects or {}
        self.config = config
        self.run_dir = Path(config.out)
        # Distributed (learnedopt.distributed): this rank's share of each meta-batch; rank 0 writes.
        self.dist = distributed.current()
        self.dist.check_same_config(config.to_dict())
        self.device = self.dist.device(config.device)
        # Rank 0 reads the checkpoint and hands it to the others (nodes need not share a disk).
        checkpoint = self.dist.from_writer(lambda: self._read_resume(resume))

        experiment.check_algorithm_name(config.algorithm)
        # Initialisation draws from the global RNG: seed it before anything is built.
        torch.manual_seed(config.seed)
        self.sampler = experiment.build_sampler(config.task, self.device, objects.get("tasks"))
        learner = experiment.build_learner(
            config.learner or experiment.default_learner_spec(config.task, self.sampler),
            self.sampler, model=objects.get("model"),
            **{k: objects[k] for k in ("loss", "metrics") if objects.get(k) is not None})
        self.learner_spec = learner.config()  # complete: a module learner's parameter names too
        self.algorithm = experiment.build_algorithm(config.algorithm, learner, config.options,
                                                    self.sampler).to(self.device)
        self.dist.check_algorithm(self.algorithm)  # divisible meta-batch, shardable objective
        trainable = [p for p in self.algorithm.parameters() if p.requires_grad]
        # TrainFromScratch has nothing to meta-train: its run only records the (constant) loss and
        # checkpoints the algorithm, so that eval works on it like on any other.
        self.optimizer = meta_optimizer(trainable, self.algorithm.outer_lr) if trainable else None
        self.trainable = trainable
        self.generator = torch.Generator(device=self.sampler.device).manual_seed(config.seed)
        # Every rank built the same meta-parameters from the same seed. From here on each rank's
        # global RNG (dropout masks, a module's own sampling) is a stream of its own, as the tasks
        # of one process draw different masks; rank 0 keeps the one-process stream.
        if self.dist.rank > 0:
            torch.manual_seed(rank_seed(config.seed, self.dist.rank, 0))
        self.metric, self.higher_is_better = learner.primary_metric

        self.iteration = 0
        self.records: list[dict[str, Any]] = []
        self.window = {"count": 0, "sums": {}}   # train metrics since the last log record
        self.best = {"iteration": None, "metric": self.metric, "value": None,
                     "higher_is_better": self.higher_is_better}
        self.elapsed_before = 0.0
        self.saved: dict[str, int | None] = {}   # checkpoint file -> the iteration it holds
        self.warned: set[str] = set()            # divergence warnings given (once each)
        if checkpoint is not None:
            self._restore(checkpoint)
        elif self.dist.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        # metrics.jsonl is rewritten from the checkpoint's records, dropping whatever a crashed run
        # logged after its last checkpoint (the resumed run logs those iterations again).
        if self.dist.is_writer:
            atomic_write_bytes(self.run_dir / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in self.records).encode())

    def _read_resume(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: a new run); refuses to overwrite a run."""
        last = self.run_dir / "last.pt"
        if last.exists() and not resume:
            raise FileExistsError(f"{str(self.run_dir)!r} already holds a run (last.pt); pass "
                                  f"resume=True / --resume to continue it, or choose another output")
        checkpoint = load_checkpoint(last) if resume and last.exists() else None
        if resume and checkpoint is None:
            print(f"learnedopt: nothing to resume in {str(self.run_dir)!r}; starting a new run",
                  file=sys.stderr)
        if checkpoint is not None:
            _check_same_run(checkpoint.get("config", {}), self.config)
        return checkpoint

    def _write_config(self) -> None:
        record = self.config.to_dict()
        if self.dist.active:  # absent: one process
            record["distributed"] = self.dist.record()
        atomic_write_bytes(self.run_dir / "config.json",
                           (json.dumps(record, indent=2) + "\n").encode())

    # ---- state -------------------------------------------------------------------------------
    def _restore(self, checkpoint: dict[str, Any]) -> None:
        require_keys(checkpoint, ("optimizer", "rng", "metrics", "window", "best", "elapsed_s"),
                     str(self.run_dir / "last.pt"), "resume the run")
        self.algorithm.load_state_dict(checkpoint["state_dict"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.iteration = int(checkpoint["iteration"])
        self.records = list(checkpoint["metrics"])
        self.window = checkpoint["window"]
        self.best = checkpoint["best"]
        self.elapsed_before = float(checkpoint["elapsed_s"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if self.dist.rank > 0:
            ranks = rng.get("ranks")  # every rank's streams, saved by a job of several ranks
            if ranks is not None and len(ranks) == self.dist.world_size:
                mine = ranks[self.dist.rank]
                torch.set_rng_state(mine["torch"])
                if mine.get("cuda") is not None and self.device.type == "cuda":
                    torch.cuda.set_rng_state(mine["cuda"], self.device)
            else:  # saved by one process or another world size: a fresh stream of this rank's
                torch.manual_seed(rank_seed(self.config.seed, self.dist.rank, self.iteration))
        self.generator.set_state(rng["generator"])
        self.saved["last.pt"] = self.iteration
        if (self.run_dir / "best.pt").is_file():
            self.saved["best.pt"] = self.best.get("iteration")
        if self.dist.is_writer:
            self._write_config()

    def _rank_rng(self) -> dict[str, Any]:
        """This rank's global RNG streams (its own CUDA device's only)."""
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def _checkpoint(self, ranks_rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        uses_cuda = self.device.type == "cuda"
        return {
            "format": FORMAT,
            "algorithm": self.config.algorithm,
            "options": self.algorithm.options(),
            "learner": self.learner_spec,
            "task": self.config.task,
            "protocol": experiment.sampler_config(self.sampler),
            "config": self.config.to_dict(),
            "state_dict": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "iteration": self.iteration,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if uses_cuda else None,
                    "generator": self.generator.get_state(),
                    "ranks": ranks_rng},  # None in one process
            "best": dict(self.best),
            "metrics": list(self.records),
            "window": {"count": self.window["count"], "sums": dict(self.window["sums"])},
            "elapsed_s": self._elapsed(),
            "versions": {"learnedopt": learnedopt.__version__, "torch": str(torch.__version__)},
            "distributed": self.dist.record(),
        }

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.dist.is_writer:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- loop --------------------------------------------------------------------------------
    def run(self, deadline: interrupts.Deadline | None = None) -> Path:
        from tqdm.auto import tqdm

        config = self.config
        checkpoint_every = config.checkpoint_every or config.val_every
        show = sys.stderr.isatty() if config.progress is None else config.progress
        show = show and self.dist.is_writer  # one bar, rank 0's
        self.started = time.perf_counter()
        self.algorithm.train()
        if deadline is not None:  # the cost of the final checkpoint before any was written
            began = time.perf_counter()
            torch.save(self._checkpoint(), io.BytesIO())
            deadline.record_checkpoint(time.perf_counter() - began)
        validation_batches = math.ceil(
            config.val_tasks / max(1, getattr(self.algorithm, "meta_batch_size", 1) or 1))
        with tqdm(total=config.iterations, initial=self.iteration, disable=not show,
                  desc=f"{config.algorithm} on {config.task['name']}", dynamic_ncols=True) as bar, \
                interrupts.StopRequests(self.run_dir, self._describe_saved) as stop:
            stop.iteration = self.iteration
            while self.iteration < config.iterations:
                # Stop between iterations, with a checkpoint: on a signal received during the last
                # one, or when the next would not end before the deadline. Under torchrun every
                # rank stops at the same iteration (or the others would wait in a collective).
                out_of_time = deadline is not None and not deadline.fits(
                    (self.iteration + 1) % config.val_every == 0, validation_batches)
                interrupted, out_of_time = self.dist.any_of(stop.signum is not None, out_of_time)
                if interrupted or out_of_time:
                    self._save_stop_checkpoint(deadline)
                    if interrupted:
                        raise stop.stopped(self.iteration)
                    raise deadline.stopped(self.iteration, self.run_dir)
                began = time.perf_counter()
                loss, metrics = self._step()
                self.iteration += 1
                stop.iteration = self.iteration
                self._accumulate(loss, metrics)
                bar.update(1)
                if self.iteration % config.log_every == 0:
                    record = self._flush_window()
                    bar.set_postfix(loss=f"{record['meta_loss']:.4g}")
                if deadline is not None:
                    deadline.record_iteration(time.perf_counter() - began)
                if self.iteration % config.val_every == 0:
                    began = time.perf_counter()
                    self._validate(bar, deadline)
                    if deadline is not None:
                        deadline.record_validation(time.perf_counter() - began)
                if self.iteration % checkpoint_every == 0 or self.iteration == config.iterations:
                    self._save("last.pt", deadline)
        if self.best["iteration"] is None:
            # No validation ran (val_every > iterations): the final model is the only candidate.
            self._save("best.pt")
        self.dist.barrier("end of training")  # no rank returns before rank 0 has written
        return self.run_dir

    def _save(self, name: str, deadline: interrupts.Deadline | None = None) -> None:
        """Write a checkpoint file, never one holding a non-finite meta-parameter or buffer (it
        would replace a good one)."""
        state = self.algorithm.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise self._non_finite(f"the meta-parameters {bad[:5]} became non-finite (NaN or Inf)",
                                   done=True)
        began = time.perf_counter()
        # Every rank's RNG streams, so that a resumed job continues each one where it stopped.
        ranks_rng = (self.dist.all_gather(self._rank_rng(), "gather of the ranks' RNG states")
                     if self.dist.active else None)
        if self.dist.is_writer:  # the other ranks hold the same state and write nothing
            save_checkpoint(self.run_dir / name, self._checkpoint(ranks_rng))
        if deadline is not None:
            deadline.record_checkpoint(time.perf_counter() - began)
        self.saved[name] = self.iteration

    def _save_stop_checkpoint(self, deadline) -> None:
        if self.saved.get("last.pt") != self.iteration or not (self.run_dir / "last.pt").is_file():
            self._save("last.pt", deadline)

    def _describe_saved(self) -> str:
        present = [f"{str(self.run_dir / name)!r} (iteration {iteration})"
                   for name, iteration in self.saved.items() if (self.run_dir / name).is_file()]
        return ("the last good checkpoint" + ("s: " if len(present) > 1 else ": ") +
                ", ".join(present)) if present else "no checkpoint was written yet"

    def _non_finite(self, what: str, done: bool = False) -> FloatingPointError:
        iteration = self.iteration if done else self.iteration + 1
        return FloatingPointError(f"{what} at iteration {iteration}; nothing non-finite was "
                                  f"saved, {self._describe_saved()} (try a lower outer or inner "
                                  f"learning rate, or check the data for NaN)")

    def _step(self) -> tuple[float, dict[str, float]]:
        if self.algorithm.pretrains_flat:
            size = self.config.flat_batch or self.algorithm.meta_batch_size
            x, y, num_labels = self.sampler.sample_flat(size, self.generator)
            loss, metrics = self.algorithm.flat_loss(x, y, num_labels), {}
        else:
            # Every rank draws the whole meta-batch (the generator stays in step), adapts its share.
            batch = self.dist.shard(self.sampler.sample(self.algorithm.meta_batch_size,
                                                        self.generator))
            outer_step = getattr(self.algorithm, "outer_step", None)
            if outer_step is not None:
                # The algorithm owns its outer update (meta-RL: TRPO, or this optimizer).
                loss, metrics = outer_step(batch, self.optimizer)
                self._check_finite(loss)
                self._check_parameters()
                return loss.item(), metrics
            loss, metrics = self.algorithm.meta_loss(batch)
        if not self.dist.active:
            self._check_finite(loss)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.dist.active:
            # One all_reduce: meta-gradients, loss and metrics; a NaN on any rank stops every rank.
            params = ([p for g in self.optimizer.param_groups for p in g["params"]]
                      if self.optimizer is not None else [])
            loss, metrics = self.dist.average_gradients(params, loss, metrics)
            self._check_finite(loss)
        if self.optimizer is not None:
            self.algorithm.clip_meta_gradients()
            self.optimizer.step()
            self._check_parameters()
        return loss.item(), metrics

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise self._non_finite(f"the meta-loss became {loss.item()}")

    def _check_parameters(self) -> None:
        """The outer step can make a meta-parameter non-finite while the loss was finite."""
        if self.trainable and not bool(torch.stack([p.detach().isfinite().all()
                                                    for p in self.trainable]).all()):
            names = [n for n, p in self.algorithm.named_parameters()
                     if p.requires_grad and not bool(p.detach().isfinite().all())]
            raise self._non_finite(f"the outer step made the meta-parameters {names[:5]} "
                                   f"non-finite (NaN or Inf)")

    def _accumulate(self, loss: float, metrics: dict[str, float]) -> None:
        sums = self.window["sums"]
        for name, value in {"meta_loss": loss, **metrics}.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        self.window["count"] += 1

    def _flush_window(self) -> dict[str, Any]:
        count = self.window["count"]
        record = {"iteration": self.iteration, "split": "train",
                  **{name: total / count for name, total in self.window["sums"].items()},
                  "elapsed_s": round(self._elapsed(), 3)}
        self.window = {"count": 0, "sums": {}}
        self._log(record)
        return record

    def _validate(self, bar, deadline: interrupts.Deadline | None = None) -> None:
        per_task = evaluate_tasks(self.algorithm, self.sampler, "val", self.config.val_tasks,
                                  self.config.eval_batch, self.config.seed)
        record: dict[str, Any] = {"iteration": self.iteration, "split": "val",
                                  "tasks": self.config.val_tasks}
        non_finite: dict[str, int] = {}
        for name, values in per_task.items():
            bad = int((~torch.isfinite(values)).sum())
            if bad:  # NaN in the validation data, or a model that diverged on some tasks
                non_finite[name] = bad
                record[name], record[f"{name}_ci95"] = math.nan, None
            else:
                summary = summarize(values)
                record[name], record[f"{name}_ci95"] = summary["mean"], summary["ci95"]
        if self.metric not in record:
            raise KeyError(f"adapt_and_evaluate of {self.config.algorithm!r} returned "
                           f"{sorted(per_task)}, without {self.metric!r}")
        value, best = record[self.metric], self.best["value"]
        if non_finite:
            record["non_finite_tasks"] = non_finite
        # A non-finite score is never the best (and a NaN would compare false against every
        # later score, freezing best.pt).
        improved = self.metric not in non_finite and (
            best is None or (value > best if self.higher_is_better else value < best))
        record["best"] = improved
        record["elapsed_s"] = round(self._elapsed(), 3)
        if improved:
            self.best.update(iteration=self.iteration, value=value)
            # The whole state_dict: theta0, alpha, the rule weights, batch-norm buffers - every
            # meta-parameter, not only the ones a particular learner happens to expose.
            self._save("best.pt", deadline)
        self._log(record)
        line = (f"[{self.iteration}/{self.config.iterations}] val {self.metric} "
                f"{format_value(self.metric, value, record[f'{self.metric}_ci95'])}"
                + (" (best)" if improved else ""))
        if not bar.disable:
            bar.write(line)
        elif self.config.progress is None and self.dist.is_writer:  # no terminal (a log file): one line per validation
            print(line, file=sys.stderr, flush=True)
        if non_finite:
            _warn(bar, f"validation at iteration {self.iteration}: "
                       f"{', '.join(f'{n} non-finite on {k} of {self.config.val_tasks} tasks' for n, k in non_finite.items())} "
                       f"(NaN or Inf in the validation data, or a model diverging on them); "
                       f"recorded as NaN, never chosen as best.pt")
        elif not self.higher_is_better:
            self._check_divergence(bar, value)

    def _check_divergence(self, bar, value: float) -> None:
        """Warn (once per kind and process) by the rule of INNER_DIVERGENCE / OUTER_DIVERGENCE."""
        first = next((r[self.metric] for r in self.records
                      if r.get("split") == "val" and math.isfinite(r.get(self.metric, math.nan))),
                     None)
        if first is not None and first > 0 and value > OUTER_DIVERGENCE * first and \
                "outer" not in self.warned:
            self.warned.add("outer")
            _warn(bar, f"validation {self.metric} {value:.4g} at iteration {self.iteration} is "
                       f"more than {OUTER_DIVERGENCE:g} times the first validation's "
                       f"({first:.4g}): the meta-training is diverging (try a lower outer_lr)")
        if "inner" in self.warned:
            return
        self.warned.add("inner")  # checked at this process's first validation only
        try:
            with torch.random.fork_rng(devices=[]):  # leave the run's RNG stream untouched
                unadapted = evaluate_tasks(self.algorithm, self.sampler, "val",
                                           self.config.val_tasks, self.config.eval_batch,
                                           self.config.seed, steps=0)[self.metric]
        except Exception:  # noqa: BLE001 - an algorithm without a 0-step evaluation: no check
            return
        before = float(unadapted.mean()) if bool(torch.isfinite(unadapted).all()) else math.nan
        if math.isfinite(before) and before > 0 and value > INNER_DIVERGENCE * before:
            _warn(bar, f"validation {self.metric} {value:.4g} at iteration {self.iteration} is "
                       f"more than {INNER_DIVERGENCE:g} times the same tasks' {self.metric} "
                       f"without adaptation ({before:.4g}): the inner loop diverges (try a lower "
                       f"inner learning rate)")


def _warn(bar, message: str) -> None:
    text = f"learnedopt: warning: {message}"
    if not bar.disable:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)

def _check_same_run(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    keys = set(saved) | set(current)
    if "protocol" not in saved:  # a config.json from before the protocol name was recorded
        keys.discard("protocol")
    different = sorted(k for k in keys
                       if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if different:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in different)
        raise ValueError(f"cannot resume {config.out!r} with a different configuration ({details}); "
                         f"only {list(TrainConfig.RESUMABLE_CHANGES)} may change")


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (``path`` is the file or the run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {str(path)!r}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{str(path)!r} line {number} is not JSON: {exc}") from None
    return records
