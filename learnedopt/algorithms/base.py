"""The one small interface every algorithm implements, and which the training loop, evaluation,
CLI and benchmarks rely on (nothing else of an algorithm is used from outside)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from learnedopt.algorithms import _options
from learnedopt.learners import Learner
from learnedopt.tasks.base import TaskBatch


class MetaAlgorithm(nn.Module):
    """Base of MAML, FO-MAML, Meta-SGD, TAML, the LSTM family, TURTLE and the transfer baselines.

    Layout conventions that checkpoints and ``learnedopt.optim.*.from_pretrained`` rely on:
    an algorithm with a learned update rule holds it as ``self.rule`` (a
    :class:`learnedopt.rules.MetaLSTMRule` or :class:`~learnedopt.rules.TurtleRule`); per-coordinate
    learned step sizes (TURTLE, Meta-SGD) are ``self.alpha``, one 1-D Parameter over the learner's
    flattened parameters; the learner's initial parameters are ``self.theta0`` (1-D Parameter).

    Implementations live next to this file (registry and ``build_algorithm`` in
    ``learnedopt.algorithms``); the learner is a :class:`learnedopt.learners.Learner` used
    functionally over the flat theta. Optional extras used by the plots:
    ``predict_adapted(batch, x_grid, steps) -> (before, after)`` (regression) and, for the LSTM
    family, ``gate_trace(batch) -> dict``.
    """

    name: ClassVar[str]
    # Non-episodic pre-training (TrainFromScratch, Finetuning, Baseline++) sets this and
    # implements flat_loss; the training loop then feeds it sampler.sample_flat batches of
    # meta_batch_size examples (their meta_loss raises TypeError).
    pretrains_flat: ClassVar[bool] = False

    @classmethod
    def option_defaults(cls, task: str, ways: int | None = None) -> dict:
        """Every option with its SPEC default for ``task`` ("sine", "omniglot", "images");
        ``ways`` selects between defaults that depend on it (MAML's 5- vs 20-way Omniglot)."""
        raise NotImplementedError

    # The resolved options of this instance; every algorithm sets it in its constructor.
    _options: dict

    def _adopt(self, learner: Learner, options: dict[str, Any]) -> None:
        """Sets ``self.learner`` and ``self._options``: the defaults for the learner's task family
        (and ways), overridden by ``options``. Anything but a Learner is refused."""
        if isinstance(learner, nn.Module):
            raise TypeError(f"{self.name}: got an nn.Module ({type(learner).__name__}); wrap it as "
                            f"a learner first: learnedopt.learners.from_module(model, loss=...)")
        if not isinstance(learner, Learner):
            raise TypeError(f"{self.name}: learner must be a learnedopt.learners.Learner, "
                            f"got {type(learner).__name__}")
        self.learner = learner
        fixed = getattr(learner, "fixed", None)
        if isinstance(fixed, nn.Module):
            # A module learner's frozen parameters and constant buffers: as a child they move with
            # .to() and are saved in (and restored from) the algorithm's state_dict.
            self.learner_fixed = fixed
        self._options = _options.resolve(
            self.name, self.option_defaults(_options.task_of(learner), getattr(learner, "ways", None)),
            options)

    def options(self) -> dict:
        """The options this instance runs with (recorded in checkpoints and result files)."""
        return dict(self._options)

    def train(self, mode: bool = True) -> "MetaAlgorithm":
        """Also puts the learner's forward in train/eval behaviour (a module learner's dropout)."""
        super().train(mode)
        learner = getattr(self, "learner", None)
        if learner is not None:
            learner.train(mode)
        return self

    @property
    def meta_batch_size(self) -> int:
        return self._options["meta_batch_size"]

    @property
    def outer_lr(self) -> float:
        return self._options["outer_lr"]

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """The differentiable outer objective over the batch's tasks, and metrics to log."""
        raise NotImplementedError

    def flat_loss(self, x: Tensor, y: Tensor, num_labels: int) -> Tensor:
        raise NotImplementedError

    def clip_meta_gradients(self) -> None:
        """Called between backward and the outer optimizer step (per-algorithm clipping)."""

    def adapt_and_evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, Tensor]:
        """Adapt to each task's support set with ``steps`` inner steps (default: the test-time
        count) and return per-task query metrics, each of shape (B,): always "loss", and
        "accuracy" for classification. Keeps no meta-gradient graph."""
        raise NotImplementedError
