"""The functional learners against torch.nn equivalents, and the flat-parameter helpers."""

import math

import pytest
import torch
from torch import nn

from learnedopt.learners import Conv4, MLP, ParamLayout, build_learner, learner_for_task
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.sine import SineTasks


def module_params_to_theta(learner, named):
    return learner.layout.flatten({name: t.detach() for name, t in named.items()})


def test_layout_views_share_storage_and_round_trip():
    layout = ParamLayout([("a", (2, 3)), ("b", (4,))])
    theta = torch.arange(10.0)
    parts = layout.unflatten(theta)
    assert parts["a"].shape == (2, 3) and parts["b"].shape == (4,)
    assert parts["a"].data_ptr() == theta.data_ptr()  # a view, not a copy
    theta[7] = -1.0
    assert parts["b"][1] == -1.0
    torch.testing.assert_close(layout.flatten(parts), theta)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        layout.unflatten(torch.zeros(9))
    with pytest.raises(ValueError, match="missing"):
        layout.flatten({"a": parts["a"]})
    with pytest.raises(ValueError, match="shape"):
        layout.flatten({"a": parts["a"], "b": torch.zeros(5)})


def test_mlp_matches_torch_sequential():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    learner = MLP()
    names = ["hidden0.weight", "hidden0.bias", "hidden1.weight", "hidden1.bias", "head.weight",
             "head.bias"]
    theta = module_params_to_theta(learner, dict(zip(names, net.parameters())))
    assert learner.num_params == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    x = torch.randn(17, 1)
    torch.testing.assert_close(learner(theta, x), net(x))


def _torch_conv4(learner: Conv4, momentum=None):
    layers = []
    channels = learner.in_shape[0]
    for _ in range(4):
        layers += [nn.Conv2d(channels, learner.filters, 3, padding=int(learner.padding)),
                   nn.BatchNorm2d(learner.filters, momentum=momentum), nn.ReLU(), nn.MaxPool2d(2)]
        channels = learner.filters
    layers += [nn.Flatten(), nn.Linear(learner.feature_size, learner.ways)]
    return nn.Sequential(*layers)


def _conv4_theta(learner, net):
    named = {}
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    for k in range(4):
        named[f"conv{k}.weight"], named[f"conv{k}.bias"] = convs[k].weight, convs[k].bias
        named[f"bn{k}.weight"], named[f"bn{k}.bias"] = bns[k].weight, bns[k].bias
    named["head.weight"], named["head.bias"] = net[-1].weight, net[-1].bias
    return module_params_to_theta(learner, named)


@pytest.mark.parametrize("in_shape,padding", [((1, 28, 28), True), ((3, 48, 48), False)])
def test_conv4_matches_torch_modules_on_batch_statistics(in_shape, padding):
    torch.manual_seed(1)
    learner = Conv4(ways=5, in_shape=in_shape, filters=6, padding=padding)
    net = _torch_conv4(learner).train()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    theta = _conv4_theta(learner, net)
    x = torch.randn(7, *in_shape)
    torch.testing.assert_close(learner(theta, x), net(x), rtol=1e-4, atol=1e-5)


def test_conv4_running_statistics_match_cumulative_batchnorm():
    """bn stats accumulate over support passes like nn.BatchNorm2d(momentum=None) in train mode,
    and use_running=True evaluates like its eval mode."""
    torch.manual_seed(2)
    learner = Conv4(ways=3, in_shape=(1, 28, 28), filters=4)
    net = _torch_conv4(learner, momentum=None)
    theta = _conv4_theta(learner, net)
    stats = learner.new_bn_stats()
    net.train()
    for _ in range(3):
        x = torch.randn(6, 1, 28, 28) * 2 + 1
        torch.testing.assert_close(learner(theta, x, stats), net(x), rtol=1e-4, atol=1e-5)
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    for k in range(4):
        torch.testing.assert_close(stats.mean[k], bns[k].running_mean)
        torch.testing.assert_close(stats.var[k], bns[k].running_var)
    net.eval()
    query = torch.randn(5, 1, 28, 28)
    out = learner(theta, query, stats, use_running=True)
    torch.testing.assert_close(out, net(query), rtol=1e-4, atol=1e-5)
    # With running statistics an example's output no longer depends on the rest of the batch.
    torch.testing.assert_close(learner(theta, query[:2], stats, use_running=True), out[:2])
    assert not torch.allclose(learner(theta, query[:2]), learner(theta, query)[:2], atol=1e-4)


def test_conv4_feature_sizes_from_input_shape():
    assert Conv4(5, (1, 28, 28), 64).feature_size == 64
    assert Conv4(5, (3, 84, 84), 32).feature_size == 32 * 5 * 5
    assert Conv4(5, (3, 84, 84), 64, padding=False).feature_size == 64 * 3 * 3
    with pytest.raises(ValueError, match="too small"):
        Conv4(5, (1, 28, 28), 64, padding=False)
    with pytest.raises(ValueError, match="input must have shape"):
        Conv4(5, (1, 28, 28), 4)(Conv4(5, (1, 28, 28), 4).init_parameters(), torch.zeros(2, 3, 28, 28))


def test_init_is_seeded_and_follows_torch_default_bounds():
    learner = Conv4(5, (1, 28, 28), 8)
    a = learner.init_parameters(torch.Generator().manual_seed(3))
    b = learner.init_parameters(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    p = learner.layout.unflatten(a)
    bound = 1 / math.sqrt(8 * 9)
    assert p["conv1.weight"].abs().max() <= bound and p["conv1.weight"].abs().max() > 0.8 * bound
    assert torch.equal(p["bn2.weight"], torch.ones(8)) and torch.equal(p["bn2.bias"], torch.zeros(8))


def test_losses_and_metrics():
    learner = Conv4(3, (1, 28, 28), 4)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    metrics = learner.metrics(logits, y)
    expected = -(torch.log_softmax(logits, 1)[[0, 1], [0, 1]]).mean()
    torch.testing.assert_close(metrics["loss"], expected)
    assert metrics["accuracy"].item() == 0.5
    mlp = MLP()
    out, target = torch.randn(5, 1), torch.randn(5, 1)
    torch.testing.assert_close(mlp.metrics(out, target)["loss"], ((out - target) ** 2).mean())
    assert "accuracy" not in mlp.metrics(out, target)


def test_config_round_trip_and_learner_for_task():
    for learner in (MLP((1, 8, 1)), Conv4(7, (3, 48, 48), 5, padding=False)):
        rebuilt = build_learner(learner.config())
        assert rebuilt.config() == learner.config()
        assert rebuilt.layout.shapes == learner.layout.shapes
    with pytest.raises(ValueError, match="unknown learner"):
        build_learner({"name": "resnet"})
    assert isinstance(learner_for_task(SineTasks()), MLP)

    class FakeImages:  # the TaskSampler attributes learner_for_task reads
        kind, num_classes, device = "classification", 20, torch.device("cpu")

        def sample(self, batch_size, generator):
            x = torch.zeros(batch_size, 20, 3, 84, 84)
            return TaskBatch(x, torch.zeros(batch_size, 20, dtype=torch.long), x,
                             torch.zeros(batch_size, 20, dtype=torch.long))

    images = learner_for_task(FakeImages())
    assert (images.ways, images.in_shape, images.filters, images.feature_size) == (20, (3, 84, 84), 32, 800)
    assert learner_for_task(FakeImages(), filters=64, in_shape=(1, 28, 28)).feature_size == 64


@pytest.mark.parametrize("learner", [MLP((1, 9, 7, 1)), Conv4(3, (1, 28, 28), 4, grouped=True),
                                     Conv4(3, (1, 28, 28), 4, grouped=False),
                                     Conv4(4, (3, 48, 48), 5, padding=False, grouped=True)])
def test_a_batch_of_tasks_equals_each_task_alone(learner):
    torch.manual_seed(4)
    tasks, examples = 3, 6
    theta = torch.stack([learner.init_parameters() for _ in range(tasks)])
    if learner.kind == "regression":
        x, y = torch.randn(tasks, examples, 1), torch.randn(tasks, examples, 1)
    else:
        x = torch.randn(tasks, examples, *learner.in_shape)
        y = torch.randint(0, learner.ways, (tasks, examples))
    batched = learner(theta, x)
    metrics = learner.task_metrics(batched, y)
    for b in range(tasks):
        alone = learner(theta[b], x[b])
        torch.testing.assert_close(batched[b], alone, rtol=1e-4, atol=1e-5)
        for key, value in learner.metrics(alone, y[b]).items():
            torch.testing.assert_close(metrics[key][b], value, rtol=1e-5, atol=1e-6)
    if learner.kind == "classification":  # per-task running statistics
        stats = learner.new_bn_stats(tasks=tasks)
        learner(theta, x, stats)
        query = torch.randn(tasks, 2, *learner.in_shape)
        together = learner(theta, query, stats, use_running=True)
        for b in range(tasks):
            alone = learner.new_bn_stats()
            learner(theta[b], x[b], alone)
            torch.testing.assert_close(together[b], learner(theta[b], query[b], alone, use_running=True),
                                       rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 parameter vectors"):
        learner(theta, x[:2])
