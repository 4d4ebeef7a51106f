"""The base-learners, used functionally over one flat parameter vector theta.

Every algorithm keeps the learner's parameters as a single 1-D tensor (``theta0`` and its adapted
versions), because the learned update rules are coordinate-wise over that vector. A learner holds
no parameters itself: it knows the names and shapes of its parameters (:class:`ParamLayout`), how
to draw an initial theta, and how to run a forward pass with any theta it is given.

    learner = MLP()                                  # 1-40-40-1 ReLU (sine)
    learner = Conv4(ways=5, in_shape=(1, 28, 28))    # Omniglot
    theta = learner.init_parameters()
    out = learner(theta, x)                          # differentiable w.r.t. theta
    loss = learner.loss(out, y)

Every forward also takes a batch of tasks at once: theta (B, n) and x (B, N, ...) give (B, N, ...)
outputs, each task with its own parameters (batched matmuls for the MLP, a grouped convolution
for Conv4), and ``task_metrics`` gives per-task losses (B,). The algorithms adapt a whole
meta-batch this way instead of looping over its tasks.

Batch norm (Conv4) runs on batch statistics unless a :class:`BatchNormStats` is passed: then the
support passes accumulate running statistics into it and ``use_running=True`` evaluates with them
(the Ravi & Larochelle code's meta-test behaviour, SPEC §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ParamLayout", "BatchNormStats", "Learner", "MLP", "Conv4", "ModuleLearner",
           "from_module", "build_learner", "learner_for_task"]


class ParamLayout:
    """Names and shapes of a learner's parameters packed, in order, into one flat vector."""

    def __init__(self, entries: Sequence[tuple[str, tuple[int, ...]]]):
        self.names = [name for name, _ in entries]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ParamLayout: duplicate parameter names in {self.names}")
        self.shapes = {name: tuple(shape) for name, shape in entries}
        self.offsets: dict[str, int] = {}
        self._sizes: list[int] = []  # elements per parameter, in order (unflatten's split sizes)
        offset = 0
        for name, shape in entries:
            self.offsets[name] = offset
            self._sizes.append(math.prod(shape))
            offset += self._sizes[-1]
        self.numel = offset

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of ``theta`` (no copies) shaped as the named parameters; a batch of vectors
        (B, n) gives (B, *shape) views."""
        if theta.dim() not in (1, 2) or theta.shape[-1] != self.numel:
            raise ValueError(f"expected a flat parameter vector of shape ({self.numel},) or a batch "
                             f"of them (B, {self.numel}), got {tuple(theta.shape)}")
        lead = tuple(theta.shape[:-1])
        # One split, not a slice per parameter: autograd then records one node whose backward is
        # a single concatenation, where slices each scatter into a zero tensor of theta's size and
        # get summed (measured: ~0.3 ms of a 5.5 ms sine TURTLE meta-iteration).
        parts = theta.split(self._sizes, dim=-1)
        return {name: part.view(*lead, *self.shapes[name]) for name, part in zip(self.names, parts)}

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """The flat vector of named tensors (one copy, in layout order)."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"flatten: missing parameters {missing}")
        for name in self.names:
            if tuple(tensors[name].shape) != self.shapes[name]:
                raise ValueError(f"flatten: {name} has shape {tuple(tensors[name].shape)}, "
                                 f"expected {self.shapes[name]}")
        return torch.cat([tensors[name].reshape(-1) for name in self.names])


@dataclass
class BatchNormStats:
    """Per-task running batch-norm statistics, one (mean, var) pair per batch-norm layer.

    ``momentum=None`` is a cumulative average over the support passes (every step weighs the
    same; with only a few steps an exponential average would still be dominated by its 0/1
    start); a float is torch's exponential ``momentum``.
    """
    mean: list[Tensor]
    var: list[Tensor]
    momentum: float | None = None
    updates: int = 0

    def begin_update(self) -> float:
        """The momentum factor of this pass (called once per forward pass that updates)."""
        self.updates += 1
        return 1.0 / self.updates if self.momentum is None else self.momentum


class Learner:
    """A functional base-learner: a :class:`ParamLayout`, an initialiser and a forward pass.

    The built-in :class:`MLP` and :class:`Conv4` are fast paths written directly in batched
    torch ops; :func:`from_module` makes a learner of any ``nn.Module`` behind this same interface.
    """

    kind: str  # "regression" or "classification" (a module learner may name another)
    layout: ParamLayout
    head_names: tuple[str, ...]  # parameters of the output layer (replaced by transfer baselines)
    training: bool = True  # dropout & co. of a module learner; set by the algorithm's train()/eval()

    @property
    def num_params(self) -> int:
        return self.layout.numel

    @property
    def task_family(self) -> str:
        """Whose SPEC defaults the algorithms use: "sine", "omniglot" (1 channel) or "images"."""
        if self.kind == "regression":
            return "sine"
        return "omniglot" if self.in_shape[0] == 1 else "images"

    @property
    def primary_metric(self) -> tuple[str, bool]:
        """(metric name, higher is better) used for validation, model selection and results."""
        return ("accuracy", True) if self.kind == "classification" else ("loss", False)

    def train(self, mode: bool = True) -> "Learner":
        """Train or eval behaviour of the forward (the algorithms forward their own mode)."""
        self.training = bool(mode)
        return self

    def check_batch(self, algorithm: str, batch) -> None:
        """Refuse a TaskBatch whose shapes this learner cannot take (names the tensor)."""
        if self.kind == "classification":
            for name in ("y_support", "y_query"):
                t = getattr(batch, name)
                if t.dtype != torch.int64 or t.dim() != 2:
                    raise ValueError(f"{algorithm}: batch.{name} must be int64 labels of shape "
                                     f"(B, N*K) for classification, got {t.dtype} {tuple(t.shape)}")
            for name in ("x_support", "x_query"):
                t = getattr(batch, name)
                if t.dim() != 5:
                    raise ValueError(f"{algorithm}: batch.{name} must have shape (B, N*K, C, H, W), "
                                     f"got {tuple(t.shape)}")
        else:
            for name in ("x_support", "y_support", "x_query", "y_query"):
                t = getattr(batch, name)
                if t.dim() != 3:
                    raise ValueError(f"{algorithm}: batch.{name} must have shape (B, K, features) "
                                     f"for regression, got {tuple(t.shape)}")
        if not batch.x_support.is_floating_point():
            raise ValueError(f"{algorithm}: batch.x_support must be floating point, got "
                             f"{batch.x_support.dtype}")

    def config(self) -> dict:
        raise NotImplementedError

    def init_parameters(self, generator: torch.Generator | None = None, device=None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def features(self, theta: Tensor, x: Tensor, bn: BatchNormStats | None = None,
                 use_running: bool = False) -> Tensor:
        """The representation fed to the output layer: (N, feature_size) for one task (theta
        (n,), x (N, ...)), (B, N, feature_size) for a batch (theta (B, n), x (B, N, ...))."""
        if theta.dim() == 1:
            return self.features(theta.unsqueeze(0), x.unsqueeze(0), bn, use_running)[0]
        self._check_tasks(theta, x)
        return self._batched_features(self.layout.unflatten(theta), x, bn, use_running)

    def _check_tasks(self, theta: Tensor, x: Tensor) -> None:
        if x.shape[0] != theta.shape[0]:
            raise ValueError(f"{type(self).__name__}: {theta.shape[0]} parameter vectors but "
                             f"inputs for {x.shape[0]} tasks")

    def _batched_features(self, p: dict[str, Tensor], x: Tensor, bn, use_running) -> Tensor:
        """Features of a batch of tasks from the (B, *shape) parameter views ``p``."""
        raise NotImplementedError

    @property
    def feature_size(self) -> int:
        raise NotImplementedError

    def head(self, theta: Tensor, features: Tensor) -> Tensor:
        p = self.layout.unflatten(theta)
        if theta.dim() == 1:
            return F.linear(features, p["head.weight"], p["head.bias"])
        return self._batched_head(p, features)

    @staticmethod
    def _batched_head(p: dict[str, Tensor], features: Tensor) -> Tensor:
        return torch.baddbmm(p["head.bias"].unsqueeze(1), features, p["head.weight"].transpose(1, 2))

    def __call__(self, theta: Tensor, x: Tensor, bn: BatchNormStats | None = None,
                 use_running: bool = False) -> Tensor:
        if theta.dim() == 1:
            return self.head(theta, self.features(theta, x, bn, use_running))
        # A batch (the inner loops' case) unflattens theta once for the body and the head: each
        # unflatten is an autograd node, and the inner loop differentiates through every one of
        # them twice (measured: ~0.27 ms of a 4.9 ms sine TURTLE meta-iteration).
        self._check_tasks(theta, x)
        p = self.layout.unflatten(theta)
        return self._batched_head(p, self._batched_features(p, x, bn, use_running))

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        """MSE for regression, cross-entropy for classification (mean over the examples)."""
        if self.kind == "regression":
            return F.mse_loss(output, y)
        return F.cross_entropy(output, y)

    def metrics(self, output: Tensor, y: Tensor) -> dict[str, Tensor]:
        """{"loss"} for regression, {"loss", "accuracy"} for classification (0-d tensors)."""
        result = {"loss": self.loss(output, y)}
        if self.kind == "classification":
            result["accuracy"] = (output.argmax(dim=1) == y).float().mean()
        return result

    def task_metrics(self, output: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per-task :meth:`metrics` of a batch of tasks: output (B, N, ...), y (B, N, ...) ->
        {"loss": (B,)} (+ "accuracy" for classification)."""
        tasks = output.shape[0]
        if self.kind == "regression":
            return {"loss": (output - y).pow(2).reshape(tasks, -1).mean(dim=1)}
        losses = F.cross_entropy(output.flatten(0, 1), y.flatten(), reduction="none")
        return {"loss": losses.view(tasks, -1).mean(dim=1),
                "accuracy": (output.argmax(dim=2) == y).float().mean(dim=1)}

    def new_bn_stats(self, device=None, dtype: torch.dtype = torch.float32,
                     momentum: float | None = None, tasks: int = 1) -> BatchNormStats | None:
        """Fresh running statistics for ``tasks`` tasks, or None for a learner without batch norm."""
        return None


def _uniform(shape, bound: float, generator, device, dtype) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device if generator is None else
                   generator.device, dtype=dtype)
    return ((2.0 * u - 1.0) * bound).to(device)


class MLP(Learner):
    """Fully connected ReLU network; the default 1-40-40-1 is MAML's sine learner."""

    kind = "regression"
    head_names = ("head.weight", "head.bias")

    def __init__(self, sizes: Sequence[int] = (1, 40, 40, 1)):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP: sizes must be at least (in, out) with every size >= 1, got {sizes}")
        self.sizes = sizes
        entries = []
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-2], sizes[1:-1])):
            entries += [(f"hidden{k}.weight", (fan_out, fan_in)), (f"hidden{k}.bias", (fan_out,))]
        entries += [("head.weight", (sizes[-1], sizes[-2])), ("head.bias", (sizes[-1],))]
        self.layout = ParamLayout(entries)

    def config(self) -> dict:
        return {"name": "mlp", "sizes": list(self.sizes)}

    @property
    def feature_size(self) -> int:
        return self.sizes[-2]

    def init_parameters(self, generator=None, device=None, dtype=torch.float32) -> Tensor:
        # torch.nn.Linear's default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        parts = []
        for name in self.layout.names:
            shape = self.layout.shapes[name]
            fan_in = self.layout.shapes[name.replace(".bias", ".weight")][1]
            parts.append(_uniform(shape, 1.0 / math.sqrt(fan_in), generator, device, dtype).reshape(-1))
        return torch.cat(parts)

    def _batched_features(self, p, x, bn, use_running) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.sizes[0]:
            raise ValueError(f"MLP: input must have shape (N, {self.sizes[0]}) per task, "
                             f"got {tuple(x.shape[1:])}")
        h = x
        for k in range(len(self.sizes) - 2):
            weight, bias = p[f"hidden{k}.weight"], p[f"hidden{k}.bias"]
            h = torch.relu(torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)))
        return h


class Conv4(Learner):
    """4 × [conv 3×3 (padding 1 or 0), batch norm, ReLU, max-pool 2] + a linear head to ``ways``.

    The head's input size follows from ``in_shape`` (C, H, W): 64 for 1×28×28 with padding,
    ``filters``·25 for 3×84×84. Batch-norm scale and shift are part of theta.
    ``grouped``: run a batch of tasks as one grouped convolution (True), one task at a time
    (False), or None: grouped on CUDA, one at a time on the CPU, where the grouped path is the
    slower of the two (re-checked with torch 2.13 in channels-last, one rough sequential run on a
    quiet 2-core host: a 5-way 1-shot 3×84×84 TURTLE meta-iteration, meta-batch 2, took about
    3.8 s grouped against 3.45 s one task at a time).
    ``channels_last``: run the activations and filters in torch.channels_last (NHWC), the
    layout oneDNN's convolutions and the CPU's batch-norm and max-pool kernels take without
    reordering (True), in torch's default NCHW (False), or None: channels-last on the CPU,
    NCHW on CUDA (not measured there). The results are the same up to rounding.
    """

    kind = "classification"
    head_names = ("head.weight", "head.bias")
    BLOCKS = 4

    def __init__(self, ways: int, in_shape: Sequence[int] = (1, 28, 28), filters: int = 64,
                 padding: bool = True, bn_eps: float = 1e-5, grouped: bool | None = None,
                 channels_last: bool | None = None):
        in_shape = tuple(int(s) for s in in_shape)
        for name, value in (("grouped", grouped), ("channels_last", channels_last)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"Conv4: {name} must be True, False or None, got {value!r}")
        self.grouped, self.channels_last = grouped, channels_last
        if ways < 2:
            raise ValueError(f"Conv4: ways must be >= 2, got {ways}")
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"Conv4: in_shape must be (channels, height, width), got {in_shape}")
        if filters < 1:
            raise ValueError(f"Conv4: filters must be >= 1, got {filters}")
        self.ways, self.in_shape, self.filters = int(ways), in_shape, int(filters)
        self.padding, self.bn_eps = bool(padding), float(bn_eps)
        height, width = in_shape[1:]
        for block in range(self.BLOCKS):
            shrink = 0 if self.padding else 2
            height, width = (height - shrink) // 2, (width - shrink) // 2
            if height < 1 or width < 1:
                raise ValueError(f"Conv4: input {in_shape} is too small for 4 blocks "
                                 f"(padding={self.padding}): block {block + 1} would output "
                                 f"{max(height, 0)}×{max(width, 0)}")
        self.out_hw = (height, width)
        entries = []
        channels = in_shape[0]
        for k in range(self.BLOCKS):
            entries += [(f"conv{k}.weight", (filters, channels, 3, 3)), (f"conv{k}.bias", (filters,)),
                        (f"bn{k}.weight", (filters,)), (f"bn{k}.bias", (filters,))]
            channels = filters
        entries += [("head.weight", (self.ways, self.feature_size)), ("head.bias", (self.ways,))]
        self.layout = ParamLayout(entries)

    def config(self) -> dict:
        return {"name": "conv4", "ways": self.ways, "in_shape": list(self.in_shape),
                "filters": self.filters, "padding": self.padding, "bn_eps": self.bn_eps,
                "grouped": self.grouped, "channels_last": self.channels_last}

    @property
    def feature_size(self) -> int:
        return self.filters * self.out_hw[0] * self.out_hw[1]

    def init_parameters(self, generator=None, device=None, dtype=torch.float32) -> Tensor:
        # Conv and linear layers as torch's defaults (U(±1/sqrt(fan_in))); batch norm 1 and 0.
        parts = []
        for name in self.layout.names:
            shape = self.layout.shapes[name]
            if name.startswith("bn"):
                fill = 1.0 if name.endswith("weight") else 0.0
                parts.append(torch.full((math.prod(shape),), fill, device=device, dtype=dtype))
                continue
            weight_shape = self.layout.shapes[name.replace(".bias", ".weight")]
            fan_in = math.prod(weight_shape[1:])
            parts.append(_uniform(shape, 1.0 / math.sqrt(fan_in), generator, device, dtype).reshape(-1))
        return torch.cat(parts)

    def new_bn_stats(self, device=None, dtype=torch.float32, momentum=None, tasks: int = 1
                     ) -> BatchNormStats:
        # One (task, filter) pair per entry, matching the grouped layout of _batched_features.
        size = tasks * self.filters
        return BatchNormStats([torch.zeros(size, device=device, dtype=dtype) for _ in range(self.BLOCKS)],
                              [torch.ones(size, device=device, dtype=dtype) for _ in range(self.BLOCKS)],
                              momentum)

    def _batched_features(self, p, x, bn, use_running) -> Tensor:
        if x.dim() != 5 or tuple(x.shape[2:]) != self.in_shape:
            raise ValueError(f"Conv4: input must have shape (N, {', '.join(map(str, self.in_shape))}) "
                             f"per task, got {tuple(x.shape[1:])}")
        if use_running and bn is None:
            raise ValueError("Conv4: use_running=True needs the task's BatchNormStats")
        tasks, examples = x.shape[:2]
        if bn is not None and bn.mean[0].shape[0] != tasks * self.filters:
            raise ValueError(f"Conv4: the BatchNormStats hold {bn.mean[0].shape[0] // self.filters} "
                             f"tasks, the input {tasks}")
        factor = bn.begin_update() if (bn is not None and not use_running) else 0.0
        means = vars_ = [None] * self.BLOCKS
        if bn is not None:
            means, vars_ = bn.mean, bn.var
        grouped = x.is_cuda if self.grouped is None else self.grouped
        channels_last = (not x.is_cuda) if self.channels_last is None else self.channels_last
        if grouped or tasks == 1:
            return self._blocks(p, x, means, vars_, factor, use_running, channels_last)
        # One task at a time, each with its slice (a view) of the parameters and of the running
        # statistics.
        outputs = []
        for b in range(tasks):
            rows = slice(b * self.filters, (b + 1) * self.filters)
            outputs.append(self._blocks(
                {name: v[b:b + 1] for name, v in p.items()}, x[b:b + 1],
                [m if m is None else m[rows] for m in means],
                [v if v is None else v[rows] for v in vars_], factor, use_running, channels_last))
        return torch.cat(outputs)

    def _blocks(self, p, x, means, vars_, factor, use_running, channels_last) -> Tensor:
        tasks, examples = x.shape[:2]
        # Tasks become channel groups: (N, B*C, H, W) through a convolution with groups=B, so each
        # task sees only its own filters, and batch norm's per-channel statistics are per task.
        h = x.transpose(0, 1).reshape(examples, tasks * self.in_shape[0], *self.in_shape[1:])
        layout = torch.channels_last if channels_last else torch.contiguous_format
        h = h.contiguous(memory_format=layout)
        for k in range(self.BLOCKS):
            weight = p[f"conv{k}.weight"].reshape(tasks * self.filters, *p[f"conv{k}.weight"].shape[2:])
            # The filters in the activations' layout: a mixed pair makes oneDNN reorder one of
            # them on every call (and its backward reorder the gradients back).
            weight = weight.contiguous(memory_format=layout)
            h = F.conv2d(h, weight, p[f"conv{k}.bias"].reshape(-1), padding=int(self.padding),
                         groups=tasks)
            # training=True normalises with the batch's statistics and, given running tensors,
            # folds them in (in place, outside autograd); training=False uses the running ones.
            h = F.batch_norm(h, means[k], vars_[k], p[f"bn{k}.weight"].reshape(-1),
                             p[f"bn{k}.bias"].reshape(-1), training=not use_running,
                             momentum=factor, eps=self.bn_eps)
            # ReLU after the pool, on a quarter of the elements: max-pooling commutes with any
            # non-decreasing function, so values and (sub)gradients of every order are those of
            # pool(relu(h)) (a window whose maximum is <= 0 gets zero gradient either way).
            h = torch.relu(F.max_pool2d(h, 2))
        return h.reshape(examples, tasks, self.feature_size).transpose(0, 1)


def build_learner(config: dict, model=None, **module_options) -> Learner:
    """The learner described by ``learner.config()`` (as stored in checkpoints). A module
    learner's ("module") model comes from ``model`` if given, else from its recorded factory;
    ``module_options`` (loss=, metrics=) replace objects that could not be recorded."""
    config = dict(config)
    name = config.pop("name", None)
    if name == "mlp":
        return MLP(**config)
    if name == "conv4":
        return Conv4(**config)
    if name == "module":
        from learnedopt.module_learner import build_module_learner
        return build_module_learner(config, model, **module_options)
    raise ValueError(f"build_learner: unknown learner {name!r} (expected 'mlp', 'conv4' or 'module')")


def from_module(model, **options) -> Learner:
    """Any ``torch.nn.Module`` as a learner (:class:`learnedopt.module_learner.ModuleLearner`)."""
    from learnedopt.module_learner import from_module as make
    return make(model, **options)


def __getattr__(name: str):
    if name == "ModuleLearner":  # defined in its own module, which imports this one
        from learnedopt.module_learner import ModuleLearner
        return ModuleLearner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def learner_for_task(sampler, filters: int | None = None, padding: bool = True,
                     in_shape: Sequence[int] | None = None) -> Learner:
    """The paper learner for a task sampler: the sine MLP for regression, Conv4 for images.

    The image shape is read from one sampled task unless ``in_shape`` is given. ``filters``
    defaults to 64, except 32 for 84×84 images where MAML and Ravi & Larochelle use 32 (pass 64
    for the Chen et al. / TURTLE backbone).
    """
    if sampler.kind == "regression":
        return MLP()
    if in_shape is None:
        batch = sampler.sample(1, torch.Generator(device=sampler.device).manual_seed(0))
        in_shape = tuple(batch.x_support.shape[2:])
    if filters is None:
        filters = 32 if in_shape[-1] >= 84 else 64
    return Conv4(ways=sampler.num_classes, in_shape=in_shape, filters=filters, padding=padding)
