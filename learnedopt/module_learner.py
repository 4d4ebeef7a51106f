"""Any ``torch.nn.Module`` as a learner: ``learnedopt.learners.from_module(model)``.

The algorithms keep a learner's parameters as one flat vector θ (the learned rules are
coordinate-wise over it). :class:`ModuleLearner` packs a user module's *trainable* parameters into
that vector and runs the module's own ``forward`` with any θ through
``torch.func.functional_call``, so the module is never modified and any θ (adapted, per task,
differentiable to any order) can be plugged in:

    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    learner = from_module(model, loss="mse")                 # or loss="cross_entropy", or a function
    algorithm = build_algorithm("turtle", learner)

What is packed, and what is not:

* trainable parameters (``requires_grad=True``), in ``model.named_parameters()`` order, each tied
  (shared) parameter once under its first name — θ, what the algorithms meta-learn and adapt;
* frozen parameters (``requires_grad=False``) and buffers other than batch norm's running
  statistics: kept fixed, held by :attr:`ModuleLearner.fixed` (an ``nn.Module`` that an algorithm
  adopts as its child ``learner_fixed``, so they move with ``.to()`` and are saved in checkpoints);
* batch norm (every ``torch.nn.modules.batchnorm._BatchNorm`` with running statistics): batch
  statistics by default (MAML), or, given the :class:`~learnedopt.learners.BatchNormStats` of
  :meth:`new_bn_stats`, per-task running statistics accumulated over the support passes and used
  with ``use_running=True`` (the algorithms' ``bn_mode="running"``); the module's own running
  buffers are never read or written.

Modes: dropout and other train/eval behaviour follow :meth:`train` (the algorithms set it: train
during meta-training, eval at validation and meta-test); batch norm follows the rule above in
both.

A meta-batch (θ of shape (B, n), inputs (B, N, ...)) runs as ``torch.func.vmap`` over the tasks
(``batching="vmap"``) or as a loop over them (``"loop"``); ``"auto"`` (default) loops on the CPU
when the module has convolutions — a vmapped convolution with per-task weights becomes a grouped
convolution, whose backward is the slower path on the CPU, as for the built-in Conv4 — and
vmaps otherwise. Dropout under vmap draws different masks per task (``randomness="different"``).
A module that cannot be vmapped (data-dependent Python control flow, ``.item()``, in-place updates
of its inputs) runs with ``batching="loop"``; the error vmap raises says so.

What a module must satisfy (each checked, with an error naming the problem):
it has at least one trainable parameter; all trainable parameters are float32 or float64, of one
dtype; ``forward`` is a function of its parameters and inputs and does not modify a parameter in
place; with ``loss="cross_entropy"`` it returns logits (N, classes) per task, with ``"mse"``
outputs shaped like the targets.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from learnedopt import _imports
from learnedopt.learners import BatchNormStats, Learner, ParamLayout

__all__ = ["ModuleLearner", "from_module", "BUILTIN_LOSSES", "BATCHINGS"]

BATCHINGS = ("auto", "vmap", "loop")
TASK_FAMILIES = ("sine", "omniglot", "images")
TRAINABLE_DTYPES = (torch.float32, torch.float64)


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output, target)


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target)


def _accuracy(output: Tensor, target: Tensor) -> Tensor:
    return (output.argmax(dim=-1) == target).float().mean()  # as the built-in learners


# name -> (loss function, kind it implies)
BUILTIN_LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "mse": (_mse, "regression"), "cross_entropy": (_cross_entropy, "classification")}


class FixedTensors(nn.Module):
    """The module's frozen parameters and non-batch-norm buffers, as buffers of their own (under
    their names with "." written "/", as buffer names cannot hold dots)."""

    def __init__(self, tensors: Mapping[str, Tensor]):
        super().__init__()
        self.names = list(tensors)
        for name, tensor in tensors.items():
            self.register_buffer(name.replace(".", "/"), tensor.detach().clone())

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name.replace(".", "/")) for name in self.names}


class ModuleLearner(Learner):
    """A learner over a user ``nn.Module`` (see the module docstring for the contract).

    Args:
        model: the module; it is used as the function's structure and its current trainable
            parameter values become :meth:`init_parameters`.
        loss: "mse", "cross_entropy", or ``loss_fn(outputs, targets) -> scalar`` for one task.
        kind: "regression", "classification" or any other name; default: implied by a built-in
            loss, else "custom". Classification means int64 labels (B, N) and an accuracy metric.
        metrics: extra per-task metrics ``{name: fn(outputs, targets) -> scalar}``; classification
            adds "accuracy" unless given.
        primary_metric: ``(name, higher_is_better)`` for validation and model selection; default
            ("accuracy", True) for classification, ("loss", False) otherwise.
        head: name of the ``nn.Linear`` submodule that is the output layer (the transfer baselines
            replace it; everything before it is the feature extractor).
        task_family: whose SPEC defaults the algorithms use, "sine" | "omniglot" | "images";
            default "sine" for regression, "images" otherwise.
        ways: classes per task, for defaults that depend on it (default: the head's out_features
            for classification).
        batching: "auto" | "vmap" | "loop" (see the module docstring).
        factory, factory_kwargs: how to rebuild the model — the import path of a function or
            class that returns it ("package.module:attribute") and its keyword arguments —,
            recorded in :meth:`config` so that a checkpoint rebuilds the learner by itself; without
            them, evaluating or resuming needs the model object again.
    """

    def __init__(self, model: nn.Module, *, loss: str | Callable = "cross_entropy",
                 kind: str | None = None, metrics: Mapping[str, Callable] | None = None,
                 primary_metric: tuple[str, bool] | None = None, head: str | None = None,
                 task_family: str | None = None, ways: int | None = None, batching: str = "auto",
                 factory: str | None = None, factory_kwargs: Mapping[str, Any] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"from_module: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.training = True
        self._loss_fn, self._loss_spec, implied_kind = _resolve_loss(loss)
        self.kind = kind or implied_kind
        self._metric_fns = dict(metrics or {})
        self._metric_specs = {name: _imports.import_path_of(fn) for name, fn in self._metric_fns.items()}
        if self.kind == "classification" and "accuracy" not in self._metric_fns:
            self._metric_fns["accuracy"] = _accuracy
        if "loss" in self._metric_fns:
            raise ValueError("from_module: 'loss' is the loss itself; give the metric another name")
        self._primary = tuple(primary_metric) if primary_metric is not None else (
            ("accuracy", True) if self.kind == "classification" else ("loss", False))
        if self._primary[0] != "loss" and self._primary[0] not in self._metric_fns:
            raise ValueError(f"from_module: primary metric {self._primary[0]!r} is not among the "
                             f"metrics {['loss', *self._metric_fns]}")
        if batching not in BATCHINGS:
            raise ValueError(f"from_module: batching must be one of {BATCHINGS}, got {batching!r}")
        self.batching = batching
        if factory is not None:
            _imports.import_object(factory, "model factory")  # refuse a wrong path now, not at eval
        self.factory, self.factory_kwargs = factory, dict(factory_kwargs or {})

        trainable, frozen = _split_parameters(model)
        self.layout = ParamLayout([(name, tuple(p.shape)) for name, p in trainable])
        self.dtype = trainable[0][1].dtype
        self._init = torch.cat([p.detach().reshape(-1) for _, p in trainable]).clone()

        self._bn_modules = [(name, m) for name, m in model.named_modules()
                            if isinstance(m, _BatchNorm) and m.track_running_stats]
        bn_buffers = {f"{name}.{b}" for name, _ in self._bn_modules
                      for b in ("running_mean", "running_var", "num_batches_tracked")}
        constants = {name: b for name, b in model.named_buffers() if name not in bn_buffers}
        self.fixed = FixedTensors({**dict(frozen), **constants})
        self._has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())

        self.head_module_name = head
        self.head_names: tuple[str, ...] = ()
        self._feature_size: int | None = None
        if head is not None:
            self._adopt_head(head)
        if ways is None and self.kind == "classification" and head is not None:
            ways = self._head_module().out_features
        self.ways = ways
        family = task_family or ("sine" if self.kind == "regression" else "images")
        if family not in TASK_FAMILIES:
            raise ValueError(f"from_module: task_family must be one of {TASK_FAMILIES}, got {family!r}")
        self._task_family = family

    # ---------------------------------------------------------------- description
    def config(self) -> dict:
        """JSON-able description: how to rebuild the model and the loss (import paths, None where
        the object is not importable), and the trainable parameters' names and shapes, which a
        rebuilt learner must match."""
        return {"name": "module", "factory": self.factory, "kwargs": self.factory_kwargs,
                "params": [[n, list(self.layout.shapes[n])] for n in self.layout.names],
                "loss": self._loss_spec, "metrics": dict(self._metric_specs),
                "primary_metric": list(self._primary), "kind": self.kind,
                "head": self.head_module_name, "task_family": self.task_family, "ways": self.ways,
                "batching": self.batching}

    @property
    def primary_metric(self) -> tuple[str, bool]:
        return self._primary

    @property
    def task_family(self) -> str:
        return self._task_family

    def train(self, mode: bool = True) -> "ModuleLearner":
        self.training = bool(mode)
        return self

    def assign(self, theta: Tensor, model: nn.Module | None = None) -> nn.Module:
        """Copy one θ (n,) — e.g. adapted or meta-learned parameters — into ``model``'s trainable
        parameters (default: the learner's own module), to use it as an ordinary module."""
        model = self.model if model is None else model
        if theta.dim() != 1 or theta.shape[0] != self.layout.numel:
            raise ValueError(f"assign: expected θ of shape ({self.layout.numel},), got "
                             f"{tuple(theta.shape)}")
        targets = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.layout.unflatten(theta.detach()).items():
                if name not in targets or targets[name].shape != value.shape:
                    raise ValueError(f"assign: the module has no parameter {name} of shape "
                                     f"{tuple(value.shape)}")
                targets[name].copy_(value)
        return model

    def init_parameters(self, generator=None, device=None, dtype=None) -> Tensor:
        """The module's trainable parameters as they were when the learner was made (the user's
        own initialisation; ``generator`` is not used)."""
        return self._init.to(device=device, dtype=dtype or self.dtype, copy=True)

    # ---------------------------------------------------------------- head / features
    def _adopt_head(self, head: str) -> None:
        module = self._head_module()
        if not isinstance(module, nn.Linear):
            raise ValueError(f"from_module: head {head!r} must be an nn.Linear, got "
                             f"{type(module).__name__}")
        names = tuple(f"{head}.{p}" for p in ("weight", "bias") if getattr(module, p) is not None)
        missing = [n for n in names if n not in self.layout.shapes]
        if missing:
            raise ValueError(f"from_module: the head's parameters {missing} are not trainable "
                             f"parameters of the module (frozen or tied to another name)")
        self.head_names = names
        self._feature_size = module.in_features

    def _head_module(self) -> nn.Module:
        try:
            return self.model.get_submodule(self.head_module_name)
        except AttributeError:
            raise ValueError(f"from_module: the module has no submodule {self.head_module_name!r} "
                             f"(head=)") from None

    def _need_head(self, what: str) -> None:
        if not self.head_names:
            raise ValueError(f"{what} needs the learner's output layer: build it with "
                             f"from_module(model, head='<name of the final nn.Linear>')")

    @property
    def feature_size(self) -> int:
        self._need_head("feature_size")
        return self._feature_size

    def head(self, theta: Tensor, features: Tensor) -> Tensor:
        self._need_head("head")
        p = self.layout.unflatten(theta)
        weight, bias = p[self.head_names[0]], (p[self.head_names[1]] if len(self.head_names) > 1
                                              else None)
        if theta.dim() == 1:
            return F.linear(features, weight, bias)
        out = torch.bmm(features, weight.transpose(1, 2))
        return out if bias is None else out + bias.unsqueeze(1)

    def features(self, theta: Tensor, x: Tensor, bn: BatchNormStats | None = None,
                 use_running: bool = False) -> Tensor:
        """The module's output with its head replaced by the identity."""
        self._need_head("features")
        with _replaced(self.model, self.head_module_name, nn.Identity()):
            return self._run(theta, x, bn, use_running, skip=set(self.head_names))

    # ---------------------------------------------------------------- forward
    def __call__(self, theta: Tensor, x: Tensor, bn: BatchNormStats | None = None,
                 use_running: bool = False) -> Tensor:
        return self._run(theta, x, bn, use_running, skip=set())

    def _run(self, theta: Tensor, x: Tensor, bn, use_running: bool, skip: set[str]):
        if theta.dim() not in (1, 2) or theta.shape[-1] != self.layout.numel:
            raise ValueError(f"{self._what()}: expected θ of shape ({self.layout.numel},) or "
                             f"(B, {self.layout.numel}), got {tuple(theta.shape)}")
        if use_running and bn is None:
            raise ValueError(f"{self._what()}: use_running=True needs the task's BatchNormStats")
        if theta.dim() == 2 and x.shape[0] != theta.shape[0]:
            raise ValueError(f"{self._what()}: {theta.shape[0]} parameter vectors but inputs for "
                             f"{x.shape[0]} tasks")
        tasks = 1 if theta.dim() == 1 else theta.shape[0]
        if bn is not None and bn.mean:
            channels = self._bn_modules[0][1].num_features
            if bn.mean[0].numel() != tasks * channels:
                raise ValueError(f"{self._what()}: the BatchNormStats hold "
                                 f"{bn.mean[0].numel() // channels} tasks, the input {tasks}")
        params = {k: v for k, v in self.layout.unflatten(theta).items() if k not in skip}
        fixed = self.fixed.as_dict()
        factor = bn.begin_update() if (bn is not None and not use_running) else None
        version = theta._version
        with self._modes(bn, use_running, factor):
            if theta.dim() == 1:
                out = functional_call(self.model, (fixed, params, self._bn_buffers(bn, 0)), (x,))
            elif self._batching(x) == "vmap":
                out = self._vmapped(params, fixed, bn, x)
            else:
                out = _stack([functional_call(self.model, (fixed, {k: v[b] for k, v in params.items()},
                                                           self._bn_buffers(bn, b)), (x[b],))
                              for b in range(tasks)])
        if theta._version != version:
            raise ValueError(f"{self._what()}: the module's forward modified its parameters in "
                             f"place; a learner's forward must be a function of its parameters "
                             f"(use out-of-place operations on them)")
        return out

    def _vmapped(self, params, fixed, bn, x):
        tasks = x.shape[0]
        buffers = {}
        if bn is not None:
            for k, (name, module) in enumerate(self._bn_modules):
                buffers[f"{name}.running_mean"] = bn.mean[k].view(tasks, module.num_features)
                buffers[f"{name}.running_var"] = bn.var[k].view(tasks, module.num_features)
                buffers[f"{name}.num_batches_tracked"] = x.new_zeros(tasks, dtype=torch.long)

        def one_task(task_params, task_buffers, task_x):
            return functional_call(self.model, (fixed, task_params, task_buffers), (task_x,))

        try:
            return vmap(one_task, randomness="different")(params, buffers, x)
        except RuntimeError as exc:
            if "vmap" in str(exc) and self.batching == "auto":
                raise RuntimeError(f"{self._what()}: torch.func.vmap cannot run this module over a "
                                   f"batch of tasks ({exc}); build the learner with "
                                   f"from_module(..., batching='loop')") from exc
            raise

    def _batching(self, x: Tensor) -> str:
        if self.batching != "auto":
            return self.batching
        return "loop" if (self._has_conv and x.device.type == "cpu") else "vmap"

    def _bn_buffers(self, bn: BatchNormStats | None, task: int) -> dict[str, Tensor]:
        """Task ``task``'s running statistics as the module's buffer names (views: batch norm's
        in-place update lands in the BatchNormStats)."""
        if bn is None:
            return {}
        buffers = {}
        for k, (name, module) in enumerate(self._bn_modules):
            rows = slice(task * module.num_features, (task + 1) * module.num_features)
            buffers[f"{name}.running_mean"] = bn.mean[k][rows]
            buffers[f"{name}.running_var"] = bn.var[k][rows]
            buffers[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long,
                                                                 device=bn.mean[k].device)
        return buffers

    @contextlib.contextmanager
    def _modes(self, bn, use_running: bool, factor: float | None):
        """Dropout & co. follow self.training; batch norm uses batch statistics without touching
        any running buffer (bn None), accumulates into the passed ones with this pass's factor, or
        normalises with them (use_running)."""
        saved = [(m, m.training) for m in self.model.modules()]
        saved_bn = [(m, m.track_running_stats, m.momentum) for _, m in self._bn_modules]
        try:
            self.model.train(self.training)
            for _, m in self._bn_modules:
                if bn is None:
                    m.train(True)
                    m.track_running_stats = False
                elif use_running:
                    m.train(False)
                else:
                    m.train(True)
                    m.momentum = factor
            yield
        finally:
            for m, training in saved:
                m.training = training
            for m, track, momentum in saved_bn:
                m.track_running_stats, m.momentum = track, momentum

    def new_bn_stats(self, device=None, dtype=None, momentum: float | None = None,
                     tasks: int = 1) -> BatchNormStats | None:
        """Fresh running statistics (mean 0, variance 1) for ``tasks`` tasks: one pair per
        batch-norm layer, each (tasks * C,) with task-major (task, channel) entries, the layout of
        the built-in Conv4's; None for a module without batch norm."""
        if not self._bn_modules:
            return None
        dtype = dtype or self.dtype
        sizes = [tasks * m.num_features for _, m in self._bn_modules]
        means = [torch.zeros(size, device=device, dtype=dtype) for size in sizes]
        vars_ = [torch.ones(size, device=device, dtype=dtype) for size in sizes]
        return BatchNormStats(means, vars_, momentum)

    # ---------------------------------------------------------------- losses and metrics
    def loss(self, output, y: Tensor) -> Tensor:
        return self._loss_fn(output, y)

    def metrics(self, output, y: Tensor) -> dict[str, Tensor]:
        return {"loss": self._loss_fn(output, y),
                **{name: fn(output, y) for name, fn in self._metric_fns.items()}}

    def task_metrics(self, output, y: Tensor) -> dict[str, Tensor]:
        """Per-task loss and metrics (each (B,)) of a batch's outputs (B, N, ...)."""
        if self._loss_spec in ("mse", "cross_entropy"):
            result = super().task_metrics(output, y)  # vectorised, as for the built-in learners
            extra = {n: f for n, f in self._metric_fns.items() if n not in result}
        else:
            result, extra = {}, {"loss": self._loss_fn, **self._metric_fns}
        if extra:
            result.update(_per_task(extra, output, y, self.batching == "loop"))
        return result

    def check_batch(self, algorithm: str, batch) -> None:
        """Shapes a module learner relies on: B tasks everywhere, as many targets as inputs per
        task, and int64 labels (B, N) for classification."""
        tasks = batch.x_support.shape[0]
        for split in ("support", "query"):
            x, y = getattr(batch, f"x_{split}"), getattr(batch, f"y_{split}")
            if x.dim() < 2 or y.dim() < 2 or x.shape[0] != tasks or y.shape[0] != tasks:
                raise ValueError(f"{algorithm}: batch.x_{split} / y_{split} must be (B, N, ...) "
                                 f"with B = {tasks} tasks, got {tuple(x.shape)} / {tuple(y.shape)}")
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"{algorithm}: batch.x_{split} has {x.shape[1]} examples per task "
                                 f"but y_{split} {y.shape[1]}")
            if self.kind == "classification" and (y.dtype != torch.int64 or y.dim() != 2):
                raise ValueError(f"{algorithm}: batch.y_{split} must be int64 labels of shape "
                                 f"(B, N) for classification, got {y.dtype} {tuple(y.shape)}")

    def _what(self) -> str:
        return f"ModuleLearner({type(self.model).__name__})"


def from_module(model: nn.Module, *, loss: str | Callable = "cross_entropy", **options: Any
                ) -> ModuleLearner:
    """A :class:`ModuleLearner` over ``model``; ``options`` as ModuleLearner's."""
    return ModuleLearner(model, loss=loss, **options)


def build_module_learner(spec: Mapping[str, Any], model: nn.Module | Learner | None = None,
                         loss: str | Callable | None = None,
                         metrics: Mapping[str, Callable] | None = None) -> Learner:
    """The learner a :meth:`ModuleLearner.config` describes. The module is ``model`` if given
    (an ``nn.Module``, or a learner to use as it is), else ``spec["factory"]`` called with
    ``spec["kwargs"]``; the loss and metrics are the recorded import paths unless given. Refused
    when the trainable parameters' names or shapes differ from the recorded ones (another model,
    or its code changed since)."""
    spec = dict(spec)
    model = _imports.given_or_built(model, spec, "model", "model", "--model")
    if isinstance(model, Learner):
        learner = model
    else:
        loss = loss if loss is not None else spec.get("loss")
        if loss is None:
            raise ValueError("this learner's loss function was not importable when it was "
                             "recorded: pass it again (loss=...)")
        recorded = dict(spec.get("metrics") or {})
        given = dict(metrics or {})
        missing = sorted(name for name, path in recorded.items() if path is None and name not in given)
        if missing:
            raise ValueError(f"the metrics {missing} were not importable when they were recorded: "
                             f"pass them again (metrics={{...}})")
        for name, path in recorded.items():
            given.setdefault(name, _imports.import_object(path, f"metric {name!r}"))
        primary = spec.get("primary_metric")
        learner = ModuleLearner(
            model, loss=loss, kind=spec.get("kind"), metrics=given,
            primary_metric=tuple(primary) if primary else None, head=spec.get("head"),
            task_family=spec.get("task_family"), ways=spec.get("ways"),
            batching=spec.get("batching", "auto"), factory=spec.get("factory"),
            factory_kwargs=spec.get("kwargs"))
    recorded_params = spec.get("params")
    if recorded_params is not None:
        current = [[n, list(learner.layout.shapes[n])] for n in learner.layout.names]
        if [[n, list(s)] for n, s in recorded_params] != current:
            raise ValueError(f"the model's trainable parameters {_describe(current)} differ from "
                             f"the recorded ones {_describe(recorded_params)}: the checkpoint was "
                             f"made with another model (or its code changed)")
    return learner


# ------------------------------------------------------------------------ helpers
def _resolve_loss(loss) -> tuple[Callable, str | None, str]:
    """(function, how the config records it, the kind it implies)."""
    if isinstance(loss, str):
        if loss in BUILTIN_LOSSES:
            fn, kind = BUILTIN_LOSSES[loss]
            return fn, loss, kind
        return _imports.import_object(loss, "loss function"), loss, "custom"
    if not callable(loss):
        raise TypeError(f"from_module: loss must be 'mse', 'cross_entropy' or a callable "
                        f"loss_fn(outputs, targets), got {type(loss).__name__}")
    return loss, _imports.import_path_of(loss), "custom"


def _split_parameters(model: nn.Module):
    trainable, frozen = [], []
    for name, p in model.named_parameters():  # tied parameters appear once, under their first name
        (trainable if p.requires_grad else frozen).append((name, p))
    if not trainable:
        raise ValueError(f"from_module: {type(model).__name__} has no trainable parameter "
                         f"(requires_grad=True); there is nothing to meta-learn")
    bad = [f"{n} ({p.dtype})" for n, p in trainable if p.dtype not in TRAINABLE_DTYPES]
    if bad:
        raise ValueError(f"from_module: trainable parameters must be float32 or float64 (the "
                         f"fused rules' dtypes); got {', '.join(bad)} — cast the module "
                         f"(model.float()) or freeze them (requires_grad_(False))")
    dtypes = sorted({str(p.dtype) for _, p in trainable})
    if len(dtypes) > 1:
        raise ValueError(f"from_module: the trainable parameters mix dtypes {dtypes}; they are "
                         f"packed into one flat vector, so they need one dtype")
    return trainable, frozen


@contextlib.contextmanager
def _replaced(model: nn.Module, name: str, replacement: nn.Module):
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, attr)
    setattr(parent, attr, replacement)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def _stack(outputs: Sequence):
    """torch.stack for tensors, element-wise for tuples/lists/dicts of them (pytree outputs)."""
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(outputs)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([o[i] for o in outputs]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}
    raise TypeError(f"the module returned a {type(first).__name__}; expected tensors")


def _per_task(fns: Mapping[str, Callable], output, y: Tensor, loop: bool) -> dict[str, Tensor]:
    """Each ``fn(outputs, targets)`` of one task, for all B tasks: vmapped, or looped when
    asked to (or when vmap cannot run the function)."""
    if not loop:
        try:
            return {name: vmap(fn, randomness="different")(output, y) for name, fn in fns.items()}
        except RuntimeError as exc:
            if "vmap" not in str(exc):
                raise
    tasks = y.shape[0]
    index = lambda tree, b: (tree[b] if isinstance(tree, Tensor) else
                             type(tree)(index(t, b) for t in tree))
    return {name: torch.stack([torch.as_tensor(fn(index(output, b), y[b])) for b in range(tasks)])
            for name, fn in fns.items()}


def _describe(params) -> str:
    if len(params) <= 4:
        return ", ".join(f"{n}{tuple(s)}" for n, s in params)
    return f"({len(params)} tensors, {sum(math.prod(s) for _, s in params)} numbers)"
