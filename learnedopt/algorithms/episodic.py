"""The inner loop shared by every episodic algorithm (MAML, Meta-SGD, TAML, the LSTMs, TURTLE).

An algorithm only says how one inner step turns (theta, g, loss, state) into the next theta
(:meth:`EpisodicAlgorithm._step`); this module runs the steps on each task's support set, the
query evaluation, the meta-batch average, and the first- versus second-order choice:

* second order: g = autograd.grad(L_S(theta_t), theta_t, create_graph=True), so the meta-gradient
  flows through g (Hessian-vector products of the learner's loss);
* first order: g and L_S are constants; theta_t still depends on theta_0 and on the rule's
  outputs, which is the backpropagation through time the LSTM paper keeps.

All tasks of a meta-batch are adapted together: theta is (B, n), one row per task, the learner
runs every task in one batched forward (``Learner`` with a (B, n) theta), and the gradient of the
summed support losses gives every task its own gradient at once (the tasks share no parameter).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from learnedopt.algorithms import _options
from learnedopt.algorithms.base import MetaAlgorithm
from learnedopt.learners import BatchNormStats, Learner
from learnedopt.tasks.base import TaskBatch

BN_MODES = ("batch", "running")


def common_defaults(task: str) -> dict:
    return {
        "inner_steps": 1, "test_inner_steps": 1, "meta_batch_size": 1, "outer_lr": 1e-3,
        "first_order": False,
        # "batch": batch statistics always (MAML); "running": the support passes of each task
        # accumulate running statistics that the query pass uses at meta-test (Ravi's code).
        "bn_mode": "batch", "bn_momentum": None,
        # Value clamp of the support gradient before the update, applied only when there is more
        # than one inner step, as in the TURTLE authors' code (None: no clamp).
        "grad_clamp": None,
        # Norm clip of the meta-gradient before the outer step (None: no clip).
        "clip_grad_norm": None,
    }


def check_batch(algorithm: str, learner: Learner, batch: TaskBatch, device: torch.device) -> None:
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"{algorithm}: expected a TaskBatch, got {type(batch).__name__}")
    for name in ("x_support", "y_support", "x_query", "y_query"):
        t = getattr(batch, name)
        if t.device != device:
            raise ValueError(f"{algorithm}: batch.{name} is on {t.device} but the algorithm is on "
                             f"{device}; move one of them (batch.to(device) / algorithm.to(device))")
    learner.check_batch(algorithm, batch)


class EpisodicAlgorithm(MetaAlgorithm):
    """Base of the algorithms that meta-learn through an unrolled inner loop on each task."""

    def __init__(self, learner: Learner, **options: Any):
        super().__init__()
        self._adopt(learner, options)
        self._check_common_options()
        self.theta0 = nn.Parameter(learner.init_parameters())

    # ----------------------------------------------------------------- options
    @classmethod
    def option_defaults(cls, task: str, ways: int | None = None) -> dict:
        if task not in ("sine", "omniglot", "images"):
            raise ValueError(f"{cls.name}: unknown task family {task!r} "
                             "(expected 'sine', 'omniglot' or 'images')")
        return cls._defaults(task, ways)

    @classmethod
    def _defaults(cls, task: str, ways: int | None) -> dict:
        raise NotImplementedError

    def _check_common_options(self) -> None:
        o, req = self._options, lambda c, m: _options.require(self.name, c, m)
        for key in ("inner_steps", "test_inner_steps"):
            req(isinstance(o[key], int) and o[key] >= 0, f"{key} must be an int >= 0, got {o[key]!r}")
        req(isinstance(o["meta_batch_size"], int) and o["meta_batch_size"] >= 1,
            f"meta_batch_size must be an int >= 1, got {o['meta_batch_size']!r}")
        req(o["outer_lr"] > 0, f"outer_lr must be > 0, got {o['outer_lr']}")
        req(o["bn_mode"] in BN_MODES, f"bn_mode must be one of {BN_MODES}, got {o['bn_mode']!r}")
        req(o["bn_momentum"] is None or 0 < o["bn_momentum"] <= 1,
            f"bn_momentum must be None (cumulative average) or in (0, 1], got {o['bn_momentum']}")
        req(o["grad_clamp"] is None or o["grad_clamp"] > 0,
            f"grad_clamp must be None or > 0, got {o['grad_clamp']}")
        req(o["clip_grad_norm"] is None or o["clip_grad_norm"] > 0,
            f"clip_grad_norm must be None or > 0, got {o['clip_grad_norm']}")

    @property
    def first_order(self) -> bool:
        return self._options["first_order"]

    def clip_meta_gradients(self) -> None:
        if self._options["clip_grad_norm"] is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self._options["clip_grad_norm"])

    # ------------------------------------------------------------ inner loop
    def _init_state(self, theta: Tensor) -> Any:
        """The rule's state for the (B, n) parameters before the first step (None: stateless)."""
        return None

    def _step(self, theta: Tensor, grad: Tensor, loss: Tensor, state: Any, t: int, steps: int
              ) -> tuple[Tensor, Any]:
        """theta_{t+1} (B, n) and the new state from the support gradients (B, n) and losses (B,)
        at theta_t."""
        raise NotImplementedError

    def _prepare_grad(self, grad: Tensor, num_examples: int, steps: int) -> Tensor:
        clamp = clamp_for(steps, self._options["grad_clamp"])
        return grad if math.isinf(clamp) else grad.clamp(-clamp, clamp)

    def _new_bn(self, tasks: int) -> BatchNormStats | None:
        if self._options["bn_mode"] != "running":
            return None
        return self.learner.new_bn_stats(self.theta0.device, self.theta0.dtype,
                                         self._options["bn_momentum"], tasks=tasks)

    def adapt(self, x: Tensor, y: Tensor, steps: int, meta_graph: bool,
              bn: BatchNormStats | None = None, observer=None) -> Tensor:
        """The (B, n) parameters after ``steps`` inner steps on the support sets x (B, K, ...),
        y (B, K, ...) of B tasks.

        ``meta_graph=True`` keeps the graph to the meta-parameters (first or second order per the
        options); ``False`` adapts detached copies and keeps nothing but the result.
        ``observer(t, state)`` sees the rule's state after every step (gate traces).
        """
        def support_loss(theta: Tensor, t: int) -> Tensor:
            return self.learner.task_metrics(self.learner(theta, x, bn), y)["loss"]

        return self.unroll(support_loss, x.shape[0], x.shape[1], steps, meta_graph, observer)

    def unroll(self, support_loss, tasks: int, num_examples: int, steps: int, meta_graph: bool,
               observer=None, first_order: bool | None = None) -> Tensor:
        """The inner loop over any per-task support objective: ``support_loss(theta_t, t)`` gives
        the (B,) losses of the B tasks at their parameters theta_t (B, n) before step t (a
        supervised support set in :meth:`adapt`, a policy-gradient surrogate on trajectories in
        meta-RL); the rule's ``_step`` turns each gradient into the next theta. Returns theta
        after ``steps`` steps; ``meta_graph`` and ``observer`` as in :meth:`adapt`;
        ``first_order`` overrides the option of that name for this call."""
        first_order = self.first_order if first_order is None else first_order
        second_order = meta_graph and not first_order
        theta = self.theta0.expand(tasks, -1)
        if not meta_graph:
            theta = theta.detach()
        state = self._init_state(theta)
        for t in range(steps):
            with torch.enable_grad():
                if not theta.requires_grad:
                    theta = theta.detach().requires_grad_()
                losses = support_loss(theta, t)
                # Each task's loss depends on its own row only: one gradient of the sum gives all.
                (grad,) = torch.autograd.grad(losses.sum(), theta, create_graph=second_order)
            if not second_order:
                losses = losses.detach()
            grad = self._prepare_grad(grad, num_examples, steps)
            if meta_graph:
                theta, state = self._step(theta, grad, losses, state, t, steps)
            else:
                with torch.no_grad():
                    theta, state = self._step(theta.detach(), grad, losses, state, t, steps)
            if observer is not None:
                observer(t, state)
        return theta

    # -------------------------------------------------------- meta objective
    def _objective(self, query_losses: Tensor, batch: TaskBatch, output: Tensor
                   ) -> tuple[Tensor, dict]:
        """The outer loss from the per-task query losses (B,); TAML adds its penalty here."""
        return query_losses.mean(), {}

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        check_batch(self.name, self.learner, batch, self.theta0.device)
        theta = self.adapt(batch.x_support, batch.y_support, self._options["inner_steps"],
                           meta_graph=True, bn=self._new_bn(batch.num_tasks))
        # Meta-training evaluates the query on batch statistics in both batch-norm modes.
        output = self.learner(theta, batch.x_query)
        metrics = self.learner.task_metrics(output, batch.y_query)
        objective, extra = self._objective(metrics["loss"], batch, output)
        logged = {key: float(value.detach().mean()) for key, value in metrics.items()}
        logged.update(extra)
        return objective, logged

    # -------------------------------------------------------------- meta-test
    def adapt_and_evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, Tensor]:
        check_batch(self.name, self.learner, batch, self.theta0.device)
        steps = self._options["test_inner_steps"] if steps is None else steps
        _options.require(self.name, isinstance(steps, int) and steps >= 0,
                         f"steps must be an int >= 0, got {steps!r}")
        bn = self._new_bn(batch.num_tasks)
        theta = self.adapt(batch.x_support, batch.y_support, steps, meta_graph=False, bn=bn)
        with torch.no_grad():
            output = self.learner(theta, batch.x_query, bn, use_running=bn is not None)
            return self.learner.task_metrics(output, batch.y_query)

    def predict_adapted(self, batch: TaskBatch, x_grid: Tensor, steps: int | None = None
                        ) -> tuple[Tensor, Tensor]:
        """Regression outputs on ``x_grid`` (G, 1) before and after adapting to each task of the
        batch: two (B, G, 1) tensors (for sine-fit plots)."""
        check_batch(self.name, self.learner, batch, self.theta0.device)
        _options.require(self.name, self.learner.kind == "regression",
                         "predict_adapted is for regression learners")
        steps = self._options["test_inner_steps"] if steps is None else steps
        theta = self.adapt(batch.x_support, batch.y_support, steps, meta_graph=False)
        grid = x_grid.expand(batch.num_tasks, *x_grid.shape)
        with torch.no_grad():
            return self.learner(self.theta0.expand_as(theta), grid), self.learner(theta, grid)

    def flat_loss(self, x: Tensor, y: Tensor, num_labels: int) -> Tensor:
        raise NotImplementedError(f"{self.name} is episodic: it has no flat pre-training")


def clamp_for(steps: int, clamp: float | None) -> float:
    """TURTLE's (and the authors' MAML's) gradient clamp applies only when T > 1."""
    return clamp if (clamp is not None and steps > 1) else math.inf
