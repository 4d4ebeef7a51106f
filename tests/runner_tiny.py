"""A minimal MetaAlgorithm for the runner's tests (training loop, checkpoints, CLI), independent of
learnedopt.algorithms: Meta-SGD-like adaptation of a 1-H-1 ReLU MLP on sine, with a learned
initialisation ``theta0``, per-coordinate step sizes ``alpha`` and a tiny learned ``rule`` (an
affine map of the gradient) - the three kinds of meta-parameters a checkpoint must keep - and a
buffer that changes during training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnedopt import experiment
from learnedopt.algorithms.base import MetaAlgorithm


class TinyMetaSGD(MetaAlgorithm):
    name = "tiny"
    # Tests set this to simulate a crash (KeyboardInterrupt) in the n-th meta_loss call of an
    # instance; a class attribute, not an option, so that the resumed run's config is unchanged.
    fail_at_call = 0

    def __init__(self, learner=None, **options):
        super().__init__()
        defaults = self.option_defaults("sine")
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"tiny: unknown option(s) {unknown}; valid options: {sorted(defaults)}")
        self._options = {**defaults, **options}
        self.learner = learner
        hidden, inner_lr = self._options["hidden"], self._options["inner_lr"]
        self.hidden = hidden
        w1, w2 = nn.Linear(1, hidden), nn.Linear(hidden, 1)
        flat = torch.cat([w1.weight.reshape(-1), w1.bias, w2.weight.reshape(-1), w2.bias])
        self.theta0 = nn.Parameter(flat.detach().clone())
        self.alpha = nn.Parameter(torch.full_like(flat, inner_lr))
        self.rule = nn.Linear(1, 1)
        with torch.no_grad():
            self.rule.weight.fill_(1.0)
            self.rule.bias.zero_()
        self.register_buffer("episodes_seen", torch.zeros((), dtype=torch.int64))
        self.calls = 0

    @classmethod
    def option_defaults(cls, task: str, ways=None) -> dict:
        return dict(hidden=16, inner_steps=1, test_inner_steps=1, meta_batch_size=4, inner_lr=0.02,
                    outer_lr=3e-3, first_order=False)

    def _forward(self, theta, x):
        h = self.hidden
        w1 = theta[:, :h].reshape(-1, h, 1)
        b1 = theta[:, h:2 * h].reshape(-1, 1, h)
        w2 = theta[:, 2 * h:3 * h].reshape(-1, 1, h)
        b2 = theta[:, 3 * h:].reshape(-1, 1, 1)
        hidden = torch.relu(x @ w1.transpose(1, 2) + b1)
        return hidden @ w2.transpose(1, 2) + b2

    def _adapt(self, batch, steps, create_graph):
        theta = self.theta0.expand(batch.num_tasks, -1)
        for _ in range(steps):
            loss = ((self._forward(theta, batch.x_support) - batch.y_support) ** 2).mean((1, 2))
            grad, = torch.autograd.grad(loss.sum(), theta, create_graph=create_graph)
            theta = theta - self.alpha * self.rule(grad.unsqueeze(-1)).squeeze(-1)
        return theta

    def meta_loss(self, batch):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated interruption")
        with torch.no_grad():
            self.episodes_seen += batch.num_tasks
        theta = self._adapt(batch, self._options["inner_steps"],
                            create_graph=not self._options["first_order"])
        loss = ((self._forward(theta, batch.x_query) - batch.y_query) ** 2).mean()
        return loss, {"support_points": float(batch.x_support.shape[1])}

    def adapt_and_evaluate(self, batch, steps=None):
        steps = self._options["test_inner_steps"] if steps is None else steps
        with torch.enable_grad():
            theta = self._adapt(batch, steps, create_graph=False).detach()
        with torch.no_grad():
            loss = ((self._forward(theta, batch.x_query) - batch.y_query) ** 2).mean((1, 2))
        return {"loss": loss}

    def predict_adapted(self, batch, x_grid, steps=None):
        steps = self._options["test_inner_steps"] if steps is None else steps
        with torch.enable_grad():
            theta = self._adapt(batch, steps, create_graph=False).detach()
        x_grid = x_grid.expand(batch.num_tasks, -1, -1)  # (G, 1) -> (B, G, 1)
        with torch.no_grad():
            before = self._forward(self.theta0.expand(batch.num_tasks, -1), x_grid)
            return before, self._forward(theta, x_grid)

    def gate_trace(self, batch):
        # Stand-in for the LSTM's gates, shaped like them: (tasks, steps, coordinates) sigmoid
        # values of 5 sampled coordinates and (tasks, steps) means over all coordinates.
        scale = torch.arange(1, 4, dtype=torch.float32).reshape(1, 3, 1)
        trace = {}
        for gate, source in (("input", self.alpha), ("forget", self.theta0)):
            values = torch.sigmoid(source.detach() * scale).expand(batch.num_tasks, -1, -1)
            trace[f"{gate}_gate"], trace[f"{gate}_gate_mean"] = values[..., :5], values.mean(-1)
        return trace


class TinyLearner:
    """What the training loop asks of a learner, for TinyMetaSGD (which runs its own MLP)."""
    kind = "regression"
    primary_metric = ("loss", False)

    def config(self) -> dict:
        return {"name": "tiny-mlp"}

    def train(self, mode: bool = True) -> "TinyLearner":
        return self


@pytest.fixture
def tiny_registry(monkeypatch):
    """Route learnedopt.experiment's construction to TinyMetaSGD for the algorithm name "tiny"
    (every other name still reaches the real learnedopt.algorithms)."""
    real_build, real_learner = experiment.build_algorithm, experiment.build_learner
    real_default, real_check = experiment.default_learner_spec, experiment.check_algorithm_name

    def build_algorithm(name, learner, options, sampler=None):
        if name == "tiny":
            return TinyMetaSGD(learner, **options)
        return real_build(name, learner, options, sampler)

    def build_learner(spec, sampler=None, model=None, **module_options):
        if spec.get("name") == "tiny-mlp":
            return TinyLearner()
        return real_learner(spec, sampler, model=model, **module_options)

    def default_learner_spec(task_spec, sampler):
        return {"name": "tiny-mlp"} if task_spec["name"] == "sine" else real_default(task_spec, sampler)

    monkeypatch.setattr(experiment, "check_algorithm_name",
                        lambda name: None if name == "tiny" else real_check(name))
    monkeypatch.setattr(experiment, "build_algorithm", build_algorithm)
    monkeypatch.setattr(experiment, "build_learner", build_learner)
    monkeypatch.setattr(experiment, "default_learner_spec", default_learner_spec)


def tiny_config(out, **overrides):
    """A short sine run of the "tiny" algorithm into ``out`` (tiny_registry registers it); the
    tests of the training loop change what they test through ``overrides``."""
    from learnedopt.train import TrainConfig
    settings = dict(algorithm="tiny", task={"name": "sine", "shots": 5, "queries": 5}, out=str(out),
                    iterations=24, val_every=6, val_tasks=20, eval_batch=10, log_every=3, seed=3,
                    progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)
