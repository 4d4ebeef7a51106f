"""The package's Conv4 on every path (grouped / one task at a time, channels-last / NCHW) against
the plain nn.Module Conv4 of bench/conv_learner.py called with functional_call: outputs, first-
and second-order gradients in float64 on fresh random inputs; and the bench's eager meta-loss
against the algorithm's own (so the benchmark compares the same computation)."""

import pytest
import torch
import torch.nn.functional as F

from bench.conv_learner import EagerConv4, eager_meta_loss
from learnedopt import ops
from learnedopt.algorithms import build_algorithm
from learnedopt.learners import Conv4, build_learner
from learnedopt.tasks.base import TaskBatch

PATHS = [dict(grouped=g, channels_last=c) for g in (True, False) for c in (True, False)]


def _eager_outputs(module, learner, theta, x):
    return torch.stack([torch.func.functional_call(module, learner.layout.unflatten(theta[b]), (x[b],))
                        for b in range(theta.shape[0])])


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"grouped={p['grouped']},cl={p['channels_last']}")
@pytest.mark.parametrize("shape,padding", [((3, 20, 20), True), ((2, 48, 54), False)])
def test_conv4_matches_the_nn_module_to_second_order(path, shape, padding):
    torch.manual_seed(11)
    tasks, examples, ways = 2, 6, 3
    learner = Conv4(ways, shape, filters=4, padding=padding, **path)
    module = EagerConv4(ways, shape, filters=4, padding=padding).double()
    theta = torch.stack([learner.init_parameters(dtype=torch.float64) for _ in range(tasks)])
    theta = (theta + 0.1 * torch.randn_like(theta)).requires_grad_()  # bn scales not all 1
    x = torch.randn(tasks, examples, *shape, dtype=torch.float64)
    y = torch.randint(0, ways, (tasks, examples))
    ours, plain = learner(theta, x), _eager_outputs(module, learner, theta, x)
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-12)
    loss_ours = F.cross_entropy(ours.flatten(0, 1), y.flatten())
    loss_plain = F.cross_entropy(plain.flatten(0, 1), y.flatten())
    (g_ours,) = torch.autograd.grad(loss_ours, theta, create_graph=True)
    (g_plain,) = torch.autograd.grad(loss_plain, theta, create_graph=True)
    torch.testing.assert_close(g_ours, g_plain, rtol=1e-9, atol=1e-11)
    v = torch.randn_like(theta)  # second order: a Hessian-vector product through both
    (h_ours,) = torch.autograd.grad((g_ours * v).sum(), theta)
    (h_plain,) = torch.autograd.grad((g_plain * v).sum(), theta)
    torch.testing.assert_close(h_ours, h_plain, rtol=1e-8, atol=1e-10)
    assert h_plain.abs().max() > 0  # the comparison is not of zeros


def test_relu_after_pool_keeps_zero_gradients_of_non_positive_windows():
    # A batch-norm shift of -100 makes every pre-activation negative: pool(relu(h)) has zero
    # output and zero gradient, and so must the package's relu(pool(h)).
    learner = Conv4(2, (1, 16, 16), filters=2, channels_last=False)
    module = EagerConv4(2, (1, 16, 16), filters=2).double()
    theta = learner.init_parameters(dtype=torch.float64)
    p = learner.layout.unflatten(theta)
    p["bn0.bias"].fill_(-100.0)
    theta.requires_grad_()
    x = torch.randn(1, 4, 1, 16, 16, dtype=torch.float64)
    ours = learner(theta.unsqueeze(0), x)
    plain = _eager_outputs(module, learner, theta.unsqueeze(0), x)
    torch.testing.assert_close(ours, plain)
    (g_ours,) = torch.autograd.grad(ours.sum(), theta)
    (g_plain,) = torch.autograd.grad(plain.sum(), theta)
    torch.testing.assert_close(g_ours, g_plain)
    assert g_ours[:learner.layout.offsets["bn0.bias"] + 2].abs().max() == 0


def test_channels_last_option_is_recorded_and_checked():
    learner = Conv4(5, (3, 84, 84), channels_last=True)
    assert learner.config()["channels_last"] is True
    assert build_learner(learner.config()).channels_last is True
    old = {k: v for k, v in learner.config().items() if k != "channels_last"}  # older checkpoints
    assert build_learner(old).channels_last is None
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        Conv4(5, channels_last="yes")


@pytest.mark.parametrize("algorithm_name,options", [("turtle", {}), ("metalstm", {"inner_steps": 3})])
def test_the_bench_eager_meta_loss_is_the_algorithms_meta_loss(algorithm_name, options):
    torch.manual_seed(3)
    shape, ways = (3, 16, 16), 3
    algorithm = build_algorithm(algorithm_name, Conv4(ways, shape, filters=3), **options).double()
    module = EagerConv4(ways, shape, filters=3).double()
    tasks = algorithm.meta_batch_size
    batch = TaskBatch(torch.rand(tasks, 2 * ways, *shape, dtype=torch.float64),
                      torch.arange(ways).repeat(2).expand(tasks, -1).contiguous(),
                      torch.rand(tasks, 4 * ways, *shape, dtype=torch.float64),
                      torch.arange(ways).repeat(4).expand(tasks, -1).contiguous())
    with ops.use_backend("reference"):
        ours, _ = algorithm.meta_loss(batch)
        plain = eager_meta_loss(algorithm, module, batch)
        torch.testing.assert_close(ours, plain, rtol=1e-9, atol=1e-12)
        g_ours = torch.autograd.grad(ours, algorithm.theta0)[0]
        g_plain = torch.autograd.grad(plain, algorithm.theta0)[0]
    torch.testing.assert_close(g_ours, g_plain, rtol=1e-7, atol=1e-10)
