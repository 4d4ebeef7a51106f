"""Meta-reinforcement learning with any episodic algorithm's inner-update rule (MAML and Meta-SGD
as Finn et al. 2017 §5.3 and Li et al. 2017 define it; TURTLE and the LSTM family beyond them).

``meta_rl_class("maml")`` is MAML's own class with this mixin in front (:class:`MetaRL`): the
rule (``_init_state`` / ``_step``, θ₀, α, φ) and the inner loop (``EpisodicAlgorithm.unroll``)
are the algorithm's, unchanged; what the mixin changes is the data each inner step sees and the
outer objective:

* **inner step** t: ``trajectories`` episodes per task sampled with θ_t, advantages from the
  per-task linear baseline, and the REINFORCE surrogate as the support loss; the rule turns its
  gradient into θ_{t+1} — second order by default, so the meta-gradient flows through the
  policy-gradient step (the MAML-RL estimator, which, like the public code, does not
  differentiate the sampling distribution of the inner trajectories);
* **outer objective**: fresh trajectories of the adapted policy, TRPO's importance-weighted
  surrogate, optimised by TRPO (``outer_optimizer="trpo"``: conjugate gradient on the
  Fisher-vector product of the mean KL, ``max_kl`` 0.01, backtracking line search), by the
  training loop's Adam (``"adam"``, ``outer_lr``), or not at all (``"none"``: the initial policy
  adapted by the rule, MAML's "random" baseline);
* ``inner_steps=0`` trains the policy itself on all goals jointly (MAML's "pretrained" baseline),
  which is then adapted at test time like the others.

The state dict keeps the algorithms' names (``theta0``, ``alpha``, ``rule.*``), so a rule
meta-trained here loads wherever a supervised one does (``learnedopt.optim.*.from_pretrained``).

Defaults (``option_defaults``): the rule's own options, then the navigation protocol for every
rule — one inner step (``test_inner_steps`` 1; the evaluation reports 0..``report_steps``),
20 tasks per meta-batch, MAML's inner rate 0.1 — and the RL options of :data:`RL_OPTIONS`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from learnedopt import ops
from learnedopt.algorithms import ALGORITHMS, _options
from learnedopt.algorithms.episodic import EpisodicAlgorithm
from learnedopt.rl.baseline import fit_predict
from learnedopt.rl.estimator import (advantages, discounted_returns, masked_task_mean,
                                     reinforce_loss, surrogate_loss)
from learnedopt.rl.policy import PolicyLearner, gaussian_kl, gaussian_log_prob
from learnedopt.rl.rollout import Trajectories, rollout, rollout_noise
from learnedopt.rl.tasks import GoalBatch
from learnedopt.rl.trpo import trpo_step

FAMILY = "navigation2d"
OUTER_OPTIMIZERS = ("trpo", "adam", "none")
BASELINES = ("linear", "none")
FISHERS = ("exact", "first_order")
# The rules that adapt a policy: every episodic algorithm but TAML, whose penalty is on the
# supervised query losses.
RULES = ("maml", "fomaml", "metasgd", "turtle", "enhanced-lstm", "metalstm", "metalstm++")

# Finn et al. §5.3 for every rule: one inner step with 20 trajectories per task, meta-batch 20.
PROTOCOL = {"inner_steps": 1, "test_inner_steps": 1, "meta_batch_size": 20}
INNER_LR = 0.1  # MAML's inner rate on 2D navigation

RL_OPTIONS: dict[str, Any] = {
    "trajectories": 20,            # per task, at every inner step and after adaptation
    "gamma": 0.99,                 # discount of the returns the baseline and advantages use
    "gae_lambda": 1.0,             # λ = 1: advantage = reward-to-go − baseline (public code)
    "normalize_advantages": True,  # per task, before every policy-gradient step (public code)
    "baseline": "linear",          # "linear": the per-task linear feature baseline; "none"
    "baseline_reg": 1e-5,          # its ridge term
    "outer_optimizer": "trpo",     # "trpo" | "adam" (the training loop's, outer_lr) | "none"
    "max_kl": 0.01,                # TRPO's trust region
    # The Fisher-vector products: "exact" differentiates the KL through the (second-order) inner
    # step, as the public code; "first_order" through a first-order one (about 8x cheaper). The
    # step direction changes, not the guarantee: the line search bounds the exact KL.
    "fisher": "exact",
    "cg_iterations": 10,
    "cg_damping": 1e-5,
    "line_search_steps": 15,
    "backtrack_ratio": 0.8,
    "report_steps": 3,             # evaluation reports the return after 0..report_steps steps
}


class MetaRL(EpisodicAlgorithm):
    """The meta-RL mixin (see the module docstring); build it with :func:`build_meta_rl`."""

    @classmethod
    def option_defaults(cls, task: str, ways: int | None = None) -> dict:
        if task != FAMILY:
            raise ValueError(f"{cls.name}: meta-RL runs on a policy learner ({FAMILY!r}), got the "
                             f"task family {task!r}")
        # The rule's own options (their regression-family values; the protocol overrides the
        # ones it fixes), then the navigation protocol and the RL options.
        options = cls._defaults("sine", None)
        options.update(PROTOCOL)
        if "inner_lr" in options:
            options["inner_lr"] = INNER_LR
        options.update(RL_OPTIONS)
        return options

    def __init__(self, learner, **options: Any):
        if not isinstance(learner, PolicyLearner):
            raise TypeError(f"{self.name} (meta-RL): the learner must be a "
                            f"learnedopt.rl.policy.PolicyLearner, got {type(learner).__name__}")
        super().__init__(learner, **options)
        o, req = self._options, lambda c, m: _options.require(self.name, c, m)
        req(isinstance(o["trajectories"], int) and o["trajectories"] >= 2,
            f"trajectories must be an int >= 2, got {o['trajectories']!r}")
        req(0.0 <= o["gamma"] <= 1.0, f"gamma must lie in [0, 1], got {o['gamma']}")
        req(0.0 <= o["gae_lambda"] <= 1.0, f"gae_lambda must lie in [0, 1], got {o['gae_lambda']}")
        req(o["baseline"] in BASELINES, f"baseline must be one of {BASELINES}, got {o['baseline']!r}")
        req(o["baseline_reg"] > 0, f"baseline_reg must be > 0, got {o['baseline_reg']}")
        req(o["outer_optimizer"] in OUTER_OPTIMIZERS,
            f"outer_optimizer must be one of {OUTER_OPTIMIZERS}, got {o['outer_optimizer']!r}")
        req(o["max_kl"] > 0, f"max_kl must be > 0, got {o['max_kl']}")
        req(o["fisher"] in FISHERS, f"fisher must be one of {FISHERS}, got {o['fisher']!r}")
        req(o["cg_damping"] >= 0, f"cg_damping must be >= 0, got {o['cg_damping']}")
        for key in ("cg_iterations", "line_search_steps"):
            req(isinstance(o[key], int) and o[key] >= 1, f"{key} must be an int >= 1, got {o[key]!r}")
        req(0.0 < o["backtrack_ratio"] < 1.0,
            f"backtrack_ratio must lie in (0, 1), got {o['backtrack_ratio']}")
        req(isinstance(o["report_steps"], int) and o["report_steps"] >= 0,
            f"report_steps must be an int >= 0, got {o['report_steps']!r}")

    # ------------------------------------------------------------------ pieces
    def _check(self, batch: GoalBatch) -> None:
        if not isinstance(batch, GoalBatch):
            raise TypeError(f"{self.name} (meta-RL): expected a GoalBatch of navigation tasks, got "
                            f"{type(batch).__name__}")
        if batch.goals.device != self.theta0.device:
            raise ValueError(f"{self.name}: the goals are on {batch.goals.device} but the algorithm "
                             f"on {self.theta0.device}; move one of them")

    def _rollout(self, theta: Tensor, batch: GoalBatch, phase: int) -> Trajectories:
        noise = rollout_noise(batch.seeds, phase, self._options["trajectories"],
                              batch.env.max_steps, device=theta.device, dtype=theta.dtype)
        return rollout(self.learner, theta.detach(), batch.goals, noise, batch.env)

    def _advantages(self, trajectories: Trajectories) -> Tensor:
        o = self._options
        values = None
        if o["baseline"] == "linear":
            returns = discounted_returns(trajectories.rewards, trajectories.mask, o["gamma"])
            values = fit_predict(trajectories.observations, returns, trajectories.mask,
                                 o["baseline_reg"])
        return advantages(trajectories.rewards, trajectories.mask, values, o["gamma"],
                          o["gae_lambda"], o["normalize_advantages"])

    def _policy(self, theta: Tensor, trajectories: Trajectories) -> tuple[Tensor, Tensor, Tensor]:
        """(log π(a|s) (B, N, T), mean, log_std) of the trajectories' actions under theta."""
        mean, log_std = self.learner(theta, trajectories.flat_observations())
        log_probs = gaussian_log_prob(mean, log_std, trajectories.flat_actions())
        return log_probs.view_as(trajectories.rewards), mean, log_std

    def adapt_policy(self, batch: GoalBatch, steps: int, meta_graph: bool, replay=None,
                     first_order: bool | None = None
                     ) -> tuple[Tensor, list[tuple[Trajectories, Tensor]]]:
        """θ (B, n) after ``steps`` policy-gradient steps of the rule, and the (trajectories,
        advantages) each step used: sampled with θ_t in phase t, or, with ``replay`` (that list
        from an earlier call), those again (TRPO's line search re-adapts on the same data).
        ``first_order`` overrides the algorithm's option for this call."""
        used: list[tuple[Trajectories, Tensor]] = []

        def support_loss(theta: Tensor, t: int) -> Tensor:
            if replay is None:
                trajectories = self._rollout(theta, batch, phase=t)
                step_data = (trajectories, self._advantages(trajectories))
            else:
                step_data = replay[t]
            used.append(step_data)
            log_probs, _, _ = self._policy(theta, step_data[0])
            return reinforce_loss(log_probs, step_data[1], step_data[0].mask)

        theta = self.unroll(support_loss, batch.num_tasks, self._options["trajectories"], steps,
                            meta_graph, first_order=first_order)
        return theta, used

    # ------------------------------------------------------------ meta-training
    def meta_loss(self, batch: GoalBatch) -> tuple[Tensor, dict[str, float]]:
        """The differentiable outer surrogate (its gradient is the MAML-RL meta-gradient) on fresh
        trajectories of the adapted policies, for an outer optimizer of the caller's."""
        self._check(batch)
        steps = self._options["inner_steps"]
        theta, used = self.adapt_policy(batch, steps, meta_graph=True)
        valid = self._rollout(theta, batch, phase=steps)
        valid_advantages = self._advantages(valid)
        log_probs, _, _ = self._policy(theta, valid)
        loss = surrogate_loss(log_probs, log_probs, valid_advantages, valid.mask).mean()
        return loss, self._logs(used, valid)

    def outer_step(self, batch: GoalBatch, optimizer: torch.optim.Optimizer | None
                   ) -> tuple[Tensor, dict[str, float]]:
        """One meta-update with the ``outer_optimizer`` option (the training loop calls this
        instead of its own backward + Adam step). Returns minus the post-adaptation return of the
        batch (what the log shows as the meta-loss) and metrics."""
        self._check(batch)
        choice = self._options["outer_optimizer"]
        if choice == "adam":
            if optimizer is None:
                raise ValueError(f"{self.name}: outer_optimizer='adam' needs the optimizer")
            loss, logs = self.meta_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.clip_meta_gradients()
            optimizer.step()
            return torch.tensor(-logs["return"]), logs
        data = self.collect(batch)
        logs = self._logs(data.inner, data.valid)
        if choice == "trpo":
            o = self._options
            info = trpo_step([p for p in self.parameters() if p.requires_grad],
                             lambda differentiable: self.outer_objective(batch, data, differentiable),
                             max_kl=o["max_kl"], damping=o["cg_damping"],
                             cg_iterations=o["cg_iterations"],
                             line_search_steps=o["line_search_steps"],
                             backtrack_ratio=o["backtrack_ratio"])
            logs.update(kl=info["kl"], step_fraction=info["step_fraction"],
                        line_search_trials=float(info["line_search_trials"]))
        return torch.tensor(-logs["return"]), logs

    def collect(self, batch: GoalBatch) -> "OuterData":
        """Everything an outer update holds fixed: the inner steps' trajectories and advantages,
        the adapted policies' fresh trajectories and advantages, and those policies' action
        distributions on them (the "old" policy of TRPO's ratio and KL)."""
        self._check(batch)
        steps = self._options["inner_steps"]
        theta, inner = self.adapt_policy(batch, steps, meta_graph=False)
        valid = self._rollout(theta, batch, phase=steps)
        with torch.no_grad():
            log_probs, mean, log_std = self._policy(theta, valid)
        return OuterData(inner, valid, self._advantages(valid), log_probs, mean, log_std)

    def outer_objective(self, batch: GoalBatch, data: "OuterData", differentiable: bool = True
                        ) -> tuple[Tensor, Tensor]:
        """(TRPO's surrogate loss, the mean KL(old ‖ new)) of the policies adapted from the current
        meta-parameters on ``data``'s inner trajectories, on its post-adaptation trajectories;
        ``differentiable``: with the graph to the meta-parameters (second order through the inner
        step unless the rule is first order; the loss on the current backend)."""
        steps = self._options["inner_steps"]
        adapted = self.adapt_policy(batch, steps, meta_graph=differentiable, replay=data.inner)[0]
        log_probs, mean, log_std = self._policy(adapted, data.valid)
        loss = surrogate_loss(log_probs, data.log_probs, data.advantages, data.valid.mask).mean()
        first_order_fisher = self._options["fisher"] == "first_order" and not self.first_order
        learned_rule = hasattr(self, "rule")
        if differentiable and (first_order_fisher or learned_rule):
            # The KL gets a graph of its own, whose Hessian (the Fisher matrix of the CG solve)
            # TRPO takes: through a first-order inner step with fisher="first_order" (same value,
            # cheaper curvature), and on the reference ops for a learned rule, whose fused ops
            # are differentiable once while Fisher-vector products differentiate the update twice.
            with ops.use_backend("reference") if learned_rule else contextlib.nullcontext():
                adapted = self.adapt_policy(batch, steps, meta_graph=True, replay=data.inner,
                                            first_order=True if first_order_fisher else None)[0]
                _, mean, log_std = self._policy(adapted, data.valid)
        kl = gaussian_kl(data.mean, data.log_std, mean, log_std).view_as(data.valid.rewards)
        return loss, masked_task_mean(kl, data.valid.mask).mean()

    @staticmethod
    def _logs(used, valid: Trajectories) -> dict[str, float]:
        before = used[0][0] if used else valid
        return {"return_before": float(before.task_returns().mean()),
                "return": float(valid.task_returns().mean())}

    # --------------------------------------------------------------- meta-test
    def adapt_and_evaluate(self, batch: GoalBatch, steps: int | None = None) -> dict[str, Tensor]:
        """Per-task returns (B,): "return" after ``steps`` inner steps (default: the test-time
        count) and "return_after_k" for k = 0..max(steps, report_steps), each the average
        undiscounted return of the task's ``trajectories`` episodes of θ_k (its own k-step
        adaptation, so a rule whose step depends on the step count sees k)."""
        self._check(batch)
        steps = self._options["test_inner_steps"] if steps is None else steps
        _options.require(self.name, isinstance(steps, int) and steps >= 0,
                         f"steps must be an int >= 0, got {steps!r}")
        result = {}
        for k in range(max(steps, self._options["report_steps"]) + 1):
            result[f"return_after_{k}"] = self.sample_adapted(batch, k).task_returns()
        result["return"] = result[f"return_after_{steps}"]
        return result

    def sample_adapted(self, batch: GoalBatch, steps: int) -> Trajectories:
        """Trajectories (no graph) of the policies adapted to each task with ``steps`` steps."""
        self._check(batch)
        theta, _ = self.adapt_policy(batch, steps, meta_graph=False)
        return self._rollout(theta, batch, phase=steps)


@dataclass
class OuterData:
    """What :meth:`MetaRL.collect` gathers for one outer update (see there)."""
    inner: list[tuple[Trajectories, Tensor]]
    valid: Trajectories
    advantages: Tensor
    log_probs: Tensor
    mean: Tensor
    log_std: Tensor


_CLASSES: dict[str, type] = {}


def meta_rl_class(name: str) -> type:
    """The meta-RL variant of the algorithm ``name`` (one of :data:`RULES`)."""
    if name not in RULES:
        raise ValueError(f"algorithm {name!r} cannot adapt a policy; meta-RL runs with one of "
                         f"{list(RULES)}")
    if name not in _CLASSES:
        base = ALGORITHMS[name]
        _CLASSES[name] = type(f"MetaRL{base.__name__}", (MetaRL, base),
                              {"__module__": __name__,
                               "__doc__": f"{base.__name__}'s inner-update rule adapting a policy "
                                          f"(learnedopt.rl.meta_rl.MetaRL)."})
    return _CLASSES[name]


def build_meta_rl(name: str, learner: PolicyLearner, **options: Any) -> MetaRL:
    """The meta-RL algorithm ``name`` over a policy learner, with the navigation defaults
    overridden by ``options``."""
    return meta_rl_class(name)(learner, **options)
