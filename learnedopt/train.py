"""The meta-training loop: ``train(TrainConfig(...)) -> run directory``.

A run directory holds::

    config.json     the TrainConfig
    metrics.jsonl   one JSON record per line: {"split": "train", ...} every ``log_every``
                    iterations, {"split": "val", ...} every ``val_every``
    last.pt         the latest checkpoint (learnedopt.checkpoint), every ``checkpoint_every``
    best.pt         the whole algorithm state at the best validation score

Resuming (``train(config, resume=True)``) restores the model, the outer optimizer, the iteration,
the task generator and the torch RNG, so on the CPU a run interrupted and resumed is bitwise the
run that was never interrupted.

A user's own model and tasks: :func:`meta_train` (``meta_train(model, tasks, algorithm="maml",
out=...)``), or ``train(config, model=..., tasks=...)`` with the specs of learnedopt.experiment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import learnedopt
from learnedopt import experiment, ops
from learnedopt.checkpoint import FORMAT, atomic_write_bytes, load_checkpoint, save_checkpoint
from learnedopt.evaluate import evaluate_tasks, format_value, summarize


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
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**data)


def meta_optimizer(parameters, lr: float) -> torch.optim.Adam:
    """The outer-loop Adam. foreach=True updates all meta-parameters with one batched op per step
    on the CPU too, where torch's default is a loop over the tensors: measured on 2 cores, 0.17 vs
    0.24 ms per step for sine TURTLE's meta-parameters, 0.29 vs 1.03 ms for Omniglot TURTLE's. It
    gives bitwise the same parameters as that loop; fused=True would not."""
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


def train(config: TrainConfig, resume: bool = False, *, model=None, tasks=None, loss=None,
          metrics=None) -> Path:
    """Meta-train as ``config`` says; returns the run directory. ``resume`` continues the run in
    ``config.out`` from its last.pt (it may raise ``iterations``, nothing else).

    ``model`` (an ``nn.Module`` or a learner) and ``tasks`` (a sampler) stand in for what the
    learner and task specs would import; ``loss`` / ``metrics`` for a module learner's functions
    that could not be recorded as import paths. Give them again to resume such a run."""
    config.validate()
    with ops.use_backend(config.backend):
        return _Trainer(config, resume, objects={"model": model, "tasks": tasks, "loss": loss,
                                                 "metrics": metrics}).run()


def meta_train(model, tasks, *, algorithm: str, out: str | os.PathLike, loss=None, metrics=None,
               head: str | None = None, task_family: str | None = None, batching: str = "auto",
               model_kwargs: dict[str, Any] | None = None, tasks_kwargs: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None, resume: bool = False, **run: Any) -> Path:
    """Meta-train ``algorithm`` on a user's model and tasks; returns the run directory (the same
    run directory, checkpoints, metrics and resume as ``learnedopt train``).

    ``model``: an ``nn.Module``, a learner (``learnedopt.learners.from_module(...)``), or the import
    path of a factory ("mypkg.nets:resnet12", called with ``model_kwargs``); ``loss`` (default:
    MSE or cross-entropy after the tasks' kind), ``metrics``, ``head``, ``task_family``,
    ``batching``: as :class:`learnedopt.module_learner.ModuleLearner`'s. ``tasks``: a sampler
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
                 loss=None if (loss is None or isinstance(loss, str)) else loss, metrics=metrics)


class _Trainer:
    def __init__(self, config: TrainConfig, resume: bool, objects: dict[str, Any] | None = None):
        objects = objects or {}
        self.config = config
        self.run_dir = Path(config.out)
        self.device = torch.device(config.device)
        last = self.run_dir / "last.pt"
        if last.exists() and not resume:
            raise FileExistsError(f"{str(self.run_dir)!r} already holds a run (last.pt); pass "
                                  f"resume=True / --resume to continue it, or choose another output")
        checkpoint = load_checkpoint(last) if resume and last.exists() else None
        if resume and checkpoint is None:
            print(f"learnedopt: nothing to resume in {str(self.run_dir)!r}; starting a new run",
                  file=sys.stderr)
        if checkpoint is not None:
            _check_same_run(checkpoint.get("config", {}), config)

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
        trainable = [p for p in self.algorithm.parameters() if p.requires_grad]
        # TrainFromScratch has nothing to meta-train: its run only records the (constant) loss and
        # checkpoints the algorithm, so that eval works on it like on any other.
        self.optimizer = meta_optimizer(trainable, self.algorithm.outer_lr) if trainable else None
        self.generator = torch.Generator(device=self.sampler.device).manual_seed(config.seed)
        self.metric, self.higher_is_better = learner.primary_metric

        self.iteration = 0
        self.records: list[dict[str, Any]] = []
        self.window = {"count": 0, "sums": {}}   # train metrics since the last log record
        self.best = {"iteration": None, "metric": self.metric, "value": None,
                     "higher_is_better": self.higher_is_better}
        self.elapsed_before = 0.0
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.run_dir / "config.json",
                               (json.dumps(config.to_dict(), indent=2) + "\n").encode())
        # metrics.jsonl is rewritten from the checkpoint's records, dropping whatever a crashed run
        # logged after its last checkpoint (the resumed run logs those iterations again).
        atomic_write_bytes(self.run_dir / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in self.records).encode())

    # ---- state -------------------------------------------------------------------------------
    def _restore(self, checkpoint: dict[str, Any]) -> None:
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
        self.generator.set_state(rng["generator"])
        atomic_write_bytes(self.run_dir / "config.json",
                           (json.dumps(self.config.to_dict(), indent=2) + "\n").encode())

    def _checkpoint(self) -> dict[str, Any]:
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
                    "generator": self.generator.get_state()},
            "best": dict(self.best),
            "metrics": list(self.records),
            "window": {"count": self.window["count"], "sums": dict(self.window["sums"])},
            "elapsed_s": self._elapsed(),
            "versions": {"learnedopt": learnedopt.__version__, "torch": str(torch.__version__)},
        }

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> Path:
        from tqdm.auto import tqdm

        config = self.config
        checkpoint_every = config.checkpoint_every or config.val_every
        show = sys.stderr.isatty() if config.progress is None else config.progress
        self.started = time.perf_counter()
        self.algorithm.train()
        with tqdm(total=config.iterations, initial=self.iteration, disable=not show,
                  desc=f"{config.algorithm} on {config.task['name']}", dynamic_ncols=True) as bar:
            while self.iteration < config.iterations:
                loss, metrics = self._step()
                self.iteration += 1
                self._accumulate(loss, metrics)
                bar.update(1)
                if self.iteration % config.log_every == 0:
                    record = self._flush_window()
                    bar.set_postfix(loss=f"{record['meta_loss']:.4g}")
                if self.iteration % config.val_every == 0:
                    self._validate(bar)
                if self.iteration % checkpoint_every == 0 or self.iteration == config.iterations:
                    save_checkpoint(self.run_dir / "last.pt", self._checkpoint())
        if self.best["iteration"] is None:
            # No validation ran (val_every > iterations): the final model is the only candidate.
            save_checkpoint(self.run_dir / "best.pt", self._checkpoint())
        return self.run_dir

    def _step(self) -> tuple[float, dict[str, float]]:
        if self.algorithm.pretrains_flat:
            size = self.config.flat_batch or self.algorithm.meta_batch_size
            x, y, num_labels = self.sampler.sample_flat(size, self.generator)
            loss, metrics = self.algorithm.flat_loss(x, y, num_labels), {}
        else:
            batch = self.sampler.sample(self.algorithm.meta_batch_size, self.generator)
            outer_step = getattr(self.algorithm, "outer_step", None)
            if outer_step is not None:
                # The algorithm owns its outer update (meta-RL: TRPO, or this optimizer).
                loss, metrics = outer_step(batch, self.optimizer)
                self._check_finite(loss)
                return loss.item(), metrics
            loss, metrics = self.algorithm.meta_loss(batch)
        self._check_finite(loss)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.algorithm.clip_meta_gradients()
            self.optimizer.step()
        return loss.item(), metrics

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"the meta-loss became {loss.item()} at iteration {self.iteration + 1}; last good "
                f"checkpoint: {str(self.run_dir / 'last.pt')!r} (try a lower outer learning rate)")

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

    def _validate(self, bar) -> None:
        per_task = evaluate_tasks(self.algorithm, self.sampler, "val", self.config.val_tasks,
                                  self.config.eval_batch, self.config.seed)
        record: dict[str, Any] = {"iteration": self.iteration, "split": "val",
                                  "tasks": self.config.val_tasks}
        for name, values in per_task.items():
            summary = summarize(values)
            record[name], record[f"{name}_ci95"] = summary["mean"], summary["ci95"]
        if self.metric not in record:
            raise KeyError(f"adapt_and_evaluate of {self.config.algorithm!r} returned "
                           f"{sorted(per_task)}, without {self.metric!r}")
        value, best = record[self.metric], self.best["value"]
        improved = best is None or (value > best if self.higher_is_better else value < best)
        record["best"] = improved
        record["elapsed_s"] = round(self._elapsed(), 3)
        if improved:
            self.best.update(iteration=self.iteration, value=value)
            # The whole state_dict: theta0, alpha, the rule weights, batch-norm buffers - every
            # meta-parameter, not only the ones a particular learner happens to expose.
            save_checkpoint(self.run_dir / "best.pt", self._checkpoint())
        self._log(record)
        line = (f"[{self.iteration}/{self.config.iterations}] val {self.metric} "
                f"{format_value(self.metric, value, record[f'{self.metric}_ci95'])}"
                + (" (best)" if improved else ""))
        if not bar.disable:
            bar.write(line)
        elif self.config.progress is None:  # no terminal (a log file): one line per validation
            print(line, file=sys.stderr, flush=True)


def _check_same_run(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    different = sorted(k for k in set(saved) | set(current)
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
