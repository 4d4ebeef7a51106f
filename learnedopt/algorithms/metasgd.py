"""Meta-SGD (Li et al. 2017; SPEC §4): theta' = theta - alpha ⊙ g, alpha learned per coordinate."""

from __future__ import annotations

import torch
from torch import nn

from learnedopt.algorithms import _options
from learnedopt.algorithms.maml import maml_defaults
from learnedopt.algorithms.episodic import EpisodicAlgorithm


class MetaSGD(EpisodicAlgorithm):
    """alpha (``self.alpha``, shaped like the flat theta) holds each coordinate's rate and sign;
    drawn from U[alpha_low, alpha_high] = U[0.005, 0.1]. One inner step at training and test, the
    paper's setting; MAML's meta-batch sizes; second order (``first_order`` is an option)."""

    name = "metasgd"

    @classmethod
    def _defaults(cls, task, ways):
        options = maml_defaults(task, ways)
        options.pop("inner_lr")
        options.update(inner_steps=1, test_inner_steps=1, alpha_low=0.005, alpha_high=0.1)
        return options

    def __init__(self, learner, **options):
        super().__init__(learner, **options)
        low, high = self._options["alpha_low"], self._options["alpha_high"]
        _options.require(self.name, low <= high, f"alpha_low must be <= alpha_high, got {low}, {high}")
        self.alpha = nn.Parameter(torch.empty_like(self.theta0).uniform_(low, high))

    def _step(self, theta, grad, loss, state, t, steps):
        return theta - self.alpha * grad, state
