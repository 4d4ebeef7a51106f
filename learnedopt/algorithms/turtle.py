"""TURTLE (Huisman, Plaat & van Rijn 2022; SPEC §3): a stateless per-coordinate MLP proposes the
update, theta_{t+1} = theta_t + alpha ⊙ g_phi([g_t, m_t, t]).

Meta-parameters: theta_0 (``self.theta0``), phi (``self.rule``, a
:class:`learnedopt.rules.TurtleRule` running ``learnedopt.ops.turtle_step``) and the
per-coordinate step sizes alpha (``self.alpha``, U(0, 1)).
"""

from __future__ import annotations


import torch
from torch import nn

from learnedopt.algorithms import _options
from learnedopt.algorithms.episodic import EpisodicAlgorithm, clamp_for, common_defaults
from learnedopt.rules import TurtleRule


class Turtle(EpisodicAlgorithm):
    """Second order, T = 5, meta-batch 2, gradients clamped to ±10 when T > 1 (authors' code).
    ``use_t=False`` feeds [g, m] (the authors' example commands); ``hidden_size`` /
    ``num_hidden_layers`` size g_phi; ``learn_alpha=False`` with ``alpha_init=1.0`` is the
    paper's hyper-parameter study (alpha fixed to ones)."""

    name = "turtle"

    @classmethod
    def _defaults(cls, task, ways):
        options = common_defaults(task)
        options.update(inner_steps=5, test_inner_steps=5, meta_batch_size=2, grad_clamp=10.0,
                       hidden_size=20, num_hidden_layers=5, use_t=True, beta=0.9,
                       alpha_init=None, learn_alpha=True)
        return options

    def __init__(self, learner, **options):
        super().__init__(learner, **options)
        o = self._options
        for key in ("hidden_size", "num_hidden_layers"):
            _options.require(self.name, isinstance(o[key], int) and o[key] >= 1,
                             f"{key} must be an int >= 1, got {o[key]!r}")
        _options.require(self.name, 0.0 <= o["beta"] <= 1.0, f"beta must lie in [0, 1], got {o['beta']}")
        self.rule = TurtleRule(hidden_size=o["hidden_size"], num_hidden_layers=o["num_hidden_layers"],
                               use_t=o["use_t"], beta=o["beta"])
        alpha = (torch.rand_like(self.theta0) if o["alpha_init"] is None
                 else torch.full_like(self.theta0, float(o["alpha_init"])))
        self.alpha = nn.Parameter(alpha, requires_grad=o["learn_alpha"])

    def _prepare_grad(self, grad, num_examples, steps):
        return grad  # the clamp runs inside the fused step (turtle_step's grad_clamp)

    def _init_state(self, theta):
        # (m, alpha for every task's row). m: turtle_step starts the average at g_0 itself.
        # alpha is repeated once per inner loop, not once per step: the B tasks' coordinates go
        # through one call of the fused step as B*n coordinates, each task's row paired with the
        # same alpha, and one repeat (one autograd node) serves all T steps.
        tasks = theta.shape[0]
        return theta.new_zeros(theta.numel()), self.alpha.repeat(tasks)

    def _step(self, theta, grad, loss, state, t, steps):
        tasks = theta.shape[0]
        m, alpha = state
        clamp = clamp_for(steps, self._options["grad_clamp"])
        theta_new, m = self.rule(theta.reshape(-1), grad.reshape(-1), m, t, alpha, grad_clamp=clamp)
        return theta_new.view(tasks, -1), (m, alpha)
