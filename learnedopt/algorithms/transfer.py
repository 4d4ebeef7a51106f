"""Transfer-learning baselines (Chen et al. 2019, as used by the TURTLE paper; SPEC §6).

* ``finetune``: pre-train the learner on minibatches pooled from all meta-training classes
  (``flat_loss``, one softmax over every training class); at test, a new N-way linear head is
  fitted on each task's support set (the backbone frozen by default, ``finetune_what="all"``
  moves it too).
* ``baseline++``: the same with cosine-similarity heads, logits = s · cos(feature, w_c).
* ``scratch``: nothing is learned before the test; each task trains the randomly initialised
  learner (``self.theta0``, fixed at construction) on its support set.

Test-time fitting follows Chen et al. and TURTLE: ``finetune_steps`` = 100 SGD steps
(lr 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3) on support minibatches of 4; every 25
steps the loss on the whole support set is measured and the best parameters are kept.
Batch norm: pre-training runs on batch statistics and accumulates running statistics
(momentum 0.1, buffers ``bn_mean*``/``bn_var*``) that the fine-tuning and the test use, as
torch's eval mode would; ``scratch`` has no pre-trained statistics and uses batch statistics.
For regression there is no class count to change, so the pre-trained output layer is kept
(fine-tuning moves all of the MLP by default).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnedopt.algorithms import _options
from learnedopt.algorithms.base import MetaAlgorithm
from learnedopt.algorithms.episodic import check_batch
from learnedopt.learners import BatchNormStats, Learner
from learnedopt.tasks.base import TaskBatch

FINETUNE_WHAT = ("head", "all")


class TransferBaseline(MetaAlgorithm):
    pretrains_flat = True
    cosine = False       # Baseline++'s cosine-similarity heads
    pretrained = True    # False: TrainFromScratch

    @classmethod
    def option_defaults(cls, task: str, ways: int | None = None) -> dict:
        if task not in ("sine", "omniglot", "images"):
            raise ValueError(f"{cls.name}: unknown task family {task!r}")
        return {
            "outer_lr": 1e-3,
            # The flat pre-training minibatch size (16 in Chen et al. and TURTLE).
            "meta_batch_size": 16,
            # Width of the pre-training softmax: the number of meta-training classes, the third
            # value of sampler.sample_flat(...). Classification only; 0 for regression.
            "num_pretrain_classes": 0,
            "finetune_steps": 100, "finetune_batch_size": 4, "finetune_eval_every": 25,
            "finetune_lr": 0.01, "finetune_momentum": 0.9, "finetune_dampening": 0.9,
            "finetune_weight_decay": 1e-3,
            "finetune_what": "all" if (task == "sine" or not cls.pretrained) else "head",
            # Chen et al.'s code: scale 2 for at most 200 classes, else 10 (None: that rule).
            "cosine_scale": None,
            "bn_momentum": 0.1,
            "seed": 0,
        }

    def __init__(self, learner: Learner, **options: Any):
        super().__init__()
        self._adopt(learner, options)
        self._check_options()
        self.theta0 = nn.Parameter(learner.init_parameters(), requires_grad=self.pretrained)
        self.classification = learner.kind == "classification"
        classes = self._options["num_pretrain_classes"]
        if self.classification and self.pretrained and classes > 0:
            weight, bias = self._fresh_head(classes, None)
            self.pretrain_weight = nn.Parameter(weight)
            if not self.cosine:
                self.pretrain_bias = nn.Parameter(bias)
        bn = learner.new_bn_stats(momentum=self._options["bn_momentum"]) if self.pretrained else None
        self._bn_layers = 0 if bn is None else len(bn.mean)
        for k in range(self._bn_layers):
            self.register_buffer(f"bn_mean{k}", bn.mean[k])
            self.register_buffer(f"bn_var{k}", bn.var[k])

    def _check_options(self) -> None:
        o, req = self._options, lambda c, m: _options.require(self.name, c, m)
        req(o["outer_lr"] > 0, f"outer_lr must be > 0, got {o['outer_lr']}")
        for key in ("meta_batch_size", "finetune_batch_size", "finetune_eval_every"):
            req(isinstance(o[key], int) and o[key] >= 1, f"{key} must be an int >= 1, got {o[key]!r}")
        for key in ("num_pretrain_classes", "finetune_steps"):
            req(isinstance(o[key], int) and o[key] >= 0, f"{key} must be an int >= 0, got {o[key]!r}")
        req(o["finetune_what"] in FINETUNE_WHAT,
            f"finetune_what must be one of {FINETUNE_WHAT}, got {o['finetune_what']!r}")
        req(o["finetune_lr"] > 0, f"finetune_lr must be > 0, got {o['finetune_lr']}")
        req(o["cosine_scale"] is None or o["cosine_scale"] > 0,
            f"cosine_scale must be None or > 0, got {o['cosine_scale']}")
        req(0 < o["bn_momentum"] <= 1, f"bn_momentum must lie in (0, 1], got {o['bn_momentum']}")
        req(not (self.cosine and self.learner.kind != "classification"),
            "cosine-similarity heads need a classification learner")
        req(bool(self.learner.head_names),
            "the transfer baselines replace the learner's output layer: build a module learner "
            "with from_module(model, head='<name of its final nn.Linear>')")
        req(self.learner.kind in ("classification", "regression"),
            f"the transfer baselines need a classification or regression learner, got kind "
            f"{self.learner.kind!r}")

    # ------------------------------------------------------------------ heads
    def _fresh_head(self, classes: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """A new output layer (torch.nn.Linear's default init) over the learner's features."""
        fan_in = self.learner.feature_size
        bound = 1.0 / math.sqrt(fan_in)
        weight = torch.rand(classes, fan_in, generator=generator) * 2 * bound - bound
        bias = torch.rand(classes, generator=generator) * 2 * bound - bound
        return weight.to(self.theta0), bias.to(self.theta0)  # device and dtype

    def _logits(self, head: list[Tensor], features: Tensor) -> Tensor:
        if not (self.cosine and self.classification):
            return F.linear(features, head[0], head[1])
        weight = head[0]
        scale = self._options["cosine_scale"]
        if scale is None:
            scale = 2.0 if weight.shape[0] <= 200 else 10.0
        return scale * F.linear(F.normalize(features, dim=1), F.normalize(weight, dim=1))

    def _bn(self) -> BatchNormStats | None:
        if self._bn_layers == 0:
            return None
        return BatchNormStats([getattr(self, f"bn_mean{k}") for k in range(self._bn_layers)],
                              [getattr(self, f"bn_var{k}") for k in range(self._bn_layers)],
                              self._options["bn_momentum"])

    # ------------------------------------------------------------ pre-training
    def flat_loss(self, x: Tensor, y: Tensor, num_labels: int) -> Tensor:
        if not self.classification:
            return self.learner.loss(self.learner(self.theta0, x), y)
        expected = self._options["num_pretrain_classes"]
        if num_labels != expected:
            raise ValueError(
                f"{self.name}: the flat batches have {num_labels} training classes but the algorithm "
                f"was built with num_pretrain_classes={expected}; build it with "
                f"num_pretrain_classes={num_labels} (the third value of sampler.sample_flat)")
        if y.dtype != torch.int64:
            raise ValueError(f"{self.name}: flat labels must be int64, got {y.dtype}")
        features = self.learner.features(self.theta0, x, self._bn())
        head = [self.pretrain_weight] + ([] if self.cosine else [self.pretrain_bias])
        return F.cross_entropy(self._logits(head, features), y)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise TypeError(f"{self.name} is not meta-trained on episodes (pretrains_flat = True): "
                        "train it with flat_loss on sampler.sample_flat batches")

    # -------------------------------------------------------------- meta-test
    def _features(self, body: Tensor, x: Tensor) -> Tensor:
        bn = self._bn()
        return self.learner.features(body, x, bn, use_running=bn is not None)

    def _fit(self, xs: Tensor, ys: Tensor, steps: int, generator: torch.Generator
             ) -> tuple[Tensor, list[Tensor]]:
        """(body, head) fitted to one task's support set; predictions are
        ``self._logits(head, self._features(body, x))``."""
        o, learner = self._options, self.learner
        body = self.theta0.detach().clone()
        if self.classification and self.pretrained:
            head = list(self._fresh_head(learner.ways, generator))[:1 if self.cosine else 2]
        else:
            # No new head: the learner's own output layer (random for scratch, pre-trained else).
            p = learner.layout.unflatten(body)
            head = [p[name].clone() for name in learner.head_names]
        move_body = o["finetune_what"] == "all"
        trainable = head + ([body] if move_body else [])
        for t in trainable:
            t.requires_grad_(True)
        if not move_body:
            with torch.no_grad():
                fixed_support = self._features(body, xs)

        def support_loss(index) -> Tensor:
            features = self._features(body, xs[index]) if move_body else fixed_support[index]
            return learner.loss(self._logits(head, features), ys[index])

        optimizer = torch.optim.SGD(trainable, lr=o["finetune_lr"], momentum=o["finetune_momentum"],
                                    dampening=o["finetune_dampening"],
                                    weight_decay=o["finetune_weight_decay"])
        every, count = o["finetune_eval_every"], xs.shape[0]
        best_loss, best = math.inf, None
        for step in range(1, steps + 1):
            index = torch.randperm(count, generator=generator)[:o["finetune_batch_size"]].to(xs.device)
            loss = support_loss(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    full = float(support_loss(slice(None)))
                if full < best_loss:
                    best_loss, best = full, [t.detach().clone() for t in trainable]
        if best is None:
            return body.detach(), [t.detach() for t in head]
        return (best[len(head)] if move_body else body.detach()), best[:len(head)]

    def _fit_tasks(self, batch: TaskBatch, steps: int | None):
        """(body, head) per task; minibatches and new heads come from a generator seeded with the
        ``seed`` option, so the result is deterministic."""
        check_batch(self.name, self.learner, batch, self.theta0.device)
        steps = self._options["finetune_steps"] if steps is None else steps
        _options.require(self.name, isinstance(steps, int) and steps >= 0,
                         f"steps must be an int >= 0, got {steps!r}")
        generator = torch.Generator().manual_seed(self._options["seed"])
        with torch.enable_grad():
            for b in range(batch.num_tasks):
                yield self._fit(batch.x_support[b], batch.y_support[b], steps, generator)

    def adapt_and_evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, Tensor]:
        """Fits each task with ``steps`` (default ``finetune_steps``) SGD steps."""
        results: dict[str, list[Tensor]] = {}
        for b, (body, head) in enumerate(self._fit_tasks(batch, steps)):
            with torch.no_grad():
                output = self._logits(head, self._features(body, batch.x_query[b]))
                for key, value in self.learner.metrics(output, batch.y_query[b]).items():
                    results.setdefault(key, []).append(value)
        return {key: torch.stack(values) for key, values in results.items()}

    def predict_adapted(self, batch: TaskBatch, x_grid: Tensor, steps: int | None = None
                        ) -> tuple[Tensor, Tensor]:
        """Regression outputs on ``x_grid`` (G, 1) of theta0 and of each fine-tuned learner."""
        _options.require(self.name, not self.classification, "predict_adapted is for regression")
        with torch.no_grad():
            before = self.learner(self.theta0, x_grid)
        after = []
        for body, head in self._fit_tasks(batch, steps):
            with torch.no_grad():
                after.append(self._logits(head, self._features(body, x_grid)))
        return before.expand(len(after), *before.shape).clone(), torch.stack(after)


class TrainFromScratch(TransferBaseline):
    """Learns nothing before the test: ``flat_loss`` is a constant 0 with no meta-parameter
    behind it (``theta0`` does not require grad), so a training loop runs but changes nothing."""

    name = "scratch"
    pretrained = False

    def flat_loss(self, x, y, num_labels):
        return torch.zeros((), device=self.theta0.device, requires_grad=True)


class Finetuning(TransferBaseline):
    name = "finetune"


class BaselinePlusPlus(TransferBaseline):
    name = "baseline++"
    cosine = True
