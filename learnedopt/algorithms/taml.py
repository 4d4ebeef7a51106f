"""Task-agnostic meta-learning (Jamal & Qi 2019; SPEC §5): MAML plus an inequality penalty.

``penalty="theil"`` (default, as in the stress-test paper): lambda · Theil index of the
meta-batch's query losses, (1/B) Σ (l_i/l̄) ln(l_i/l̄), which is 0 when every task has the same
loss and grows as the losses spread. ``penalty="entropy"`` (classification): lambda · mean over
tasks of [H(f_theta_T(x_q)) - H(f_theta_0(x_q))], i.e. the unadapted model is pushed to predict
with maximal entropy (no bias towards any task) and the adapted one with minimal entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learnedopt.algorithms import _options
from learnedopt.algorithms.maml import MAML, maml_defaults

PENALTIES = ("theil", "entropy")


def theil_index(losses: Tensor) -> Tensor:
    """(1/B) Σ (l_i/l̄) ln(l_i/l̄) for non-negative losses; x ln x is taken as 0 at x = 0."""
    ratio = losses / losses.mean()
    safe = torch.where(ratio > 0, ratio, torch.ones_like(ratio))
    return (ratio * torch.log(safe)).mean()


def predictive_entropy(logits: Tensor) -> Tensor:
    """Mean entropy of the softmax predictions per task, (B, N, C) -> (B,)."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean(dim=-1)


class TAML(MAML):
    name = "taml"

    @classmethod
    def _defaults(cls, task, ways):
        # lambda: the stress-test paper searched log-uniformly in [0.01, 1]; 0.1 sits in the middle.
        return {**maml_defaults(task, ways), "penalty": "theil", "penalty_weight": 0.1}

    def __init__(self, learner, **options):
        super().__init__(learner, **options)
        penalty = self._options["penalty"]
        _options.require(self.name, penalty in PENALTIES,
                         f"penalty must be one of {PENALTIES}, got {penalty!r}")
        _options.require(self.name, penalty != "entropy" or learner.kind == "classification",
                         "the entropy penalty needs a classification learner")
        _options.require(self.name, self._options["penalty_weight"] >= 0,
                         f"penalty_weight must be >= 0, got {self._options['penalty_weight']}")

    def _objective(self, query_losses, batch, output):
        if self._options["penalty"] == "theil":
            penalty = theil_index(query_losses)
        else:
            unadapted = self.learner(self.theta0.expand(batch.num_tasks, -1), batch.x_query)
            penalty = (predictive_entropy(output) - predictive_entropy(unadapted)).mean()
        objective = query_losses.mean() + self._options["penalty_weight"] * penalty
        return objective, {"penalty": float(penalty.detach())}
