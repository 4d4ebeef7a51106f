"""A first look at the fused ops: one meta-learner LSTM step and one TURTLE step on a small
learner, fused against the pure-PyTorch reference."""

import torch

from learnedopt import ops
from learnedopt.rules import MetaLSTMRule, TurtleRule

torch.manual_seed(0)
print(ops.describe())
theta = torch.randn(10_000)
grad = torch.randn(10_000) * 1e-3
loss = torch.tensor(0.7)
lstm, turtle = MetaLSTMRule(), TurtleRule()
alpha = torch.rand(10_000)
for backend in ("reference", "auto"):
    with ops.use_backend(backend):
        theta_lstm, state = lstm(theta, grad, loss, lstm.init_state(theta))
        theta_turtle, m = turtle(theta, grad, torch.zeros_like(theta), 0, alpha)
    print(f"{backend:>9}: LSTM step |dtheta| = {(theta_lstm - theta).norm():.6f}, "
          f"TURTLE step |dtheta| = {(theta_turtle - theta).norm():.6f}")
