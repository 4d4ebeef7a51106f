"""CustomTasks: a user writes how to draw one task; the base class batches, seeds, fixes the
validation/test tasks, records the config, and refuses malformed tasks with named errors. A tiny
MAML run consumes the tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learnedopt.algorithms import build_algorithm
from learnedopt.learners import MLP
from learnedopt.tasks import CustomTasks, SamplerError, TaskBatch, check_sampler
from learnedopt.tasks.base import FIXED_TASK_CHUNK
from learnedopt.tasks.custom import cpu_generator
from tests.conftest import requires_cuda


class LineTasks(CustomTasks):
    """y = a·x + b with a, b per task: the README's kind of user task."""
    kind = "regression"

    def __init__(self, shots=5, queries=7, device="cpu"):
        self.shots, self.queries = shots, queries
        self.device = torch.device(device)
        self.scale = torch.tensor(3.0)  # not JSON: left out of config()

    def draw_task(self, generator, split):
        a, b = torch.randn(2, generator=generator)
        x = torch.rand(self.shots + self.queries, 1, generator=generator) * 10 - 5
        y = a * x + b + (5.0 if split == "test" else 0.0)
        return x[:self.shots], y[:self.shots], x[self.shots:], y[self.shots:]


class NumpyClassTasks(CustomTasks):
    """2-way tasks drawn with NumPy (seeded from the generator), labels as int32 arrays."""
    kind = "classification"
    num_classes = 2

    def draw_task(self, generator, split):
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        centres = rng.normal(size=(2, 1, 3))
        x = centres + 0.1 * rng.normal(size=(2, 4, 3))   # float64
        y = np.repeat(np.arange(2, dtype=np.int32), 2)
        return x[:, :2].reshape(4, 3), y, x[:, 2:].reshape(4, 3), y


def cat(batches):
    return [torch.cat([getattr(b, f) for b in batches])
            for f in ("x_support", "y_support", "x_query", "y_query")]


def test_a_batch_is_the_stacked_draws_of_one_generator():
    tasks = LineTasks()
    batch = tasks.sample(4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    draws = [tasks.draw_task(g, "train") for _ in range(4)]
    for i, name in enumerate(("x_support", "y_support", "x_query", "y_query")):
        assert torch.equal(getattr(batch, name), torch.stack([d[i] for d in draws]))
    assert batch.x_support.shape == (4, 5, 1) and batch.y_query.shape == (4, 7, 1)


def test_same_seed_same_tasks_different_seed_different_tasks():
    tasks = LineTasks()
    a, b, c = (tasks.sample(3, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(cat([a]), cat([b])))
    assert not torch.equal(a.y_support, c.y_support)
    # One generator drawn twice gives two different batches (it advances).
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(tasks.sample(3, g).y_support, tasks.sample(3, g).y_support)


def test_fixed_tasks_do_not_depend_on_the_batch_size_and_use_their_split():
    tasks = LineTasks()
    total = FIXED_TASK_CHUNK + 9
    reference = cat(list(tasks.fixed_tasks("val", total, total, seed=2)))
    for batch_size in (1, 7, 64):
        batches = list(tasks.fixed_tasks("val", total, batch_size, seed=2))
        assert max(b.num_tasks for b in batches) == batch_size
        assert all(torch.equal(p, q) for p, q in zip(cat(batches), reference))
    test = cat(list(tasks.fixed_tasks("test", total, total, seed=2)))
    assert not torch.equal(test[0], reference[0])  # the test split has generators of its own
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.fixed_tasks("validation", 2, 2, seed=0)


def test_user_samplers_pass_the_protocol_check():
    summary = check_sampler(LineTasks())
    assert (summary.kind, summary.x_shape, summary.y_shape) == ("regression", (1,), (1,))
    summary = check_sampler(NumpyClassTasks())
    assert (summary.num_classes, summary.support_size, summary.x_shape) == (2, 4, (3,))


def test_conversions_numpy_float64_and_int32_labels():
    batch = NumpyClassTasks().sample(2, torch.Generator().manual_seed(0))
    assert batch.x_support.dtype == torch.float32 and batch.y_support.dtype == torch.int64
    assert batch.y_query.tolist() == [[0, 0, 1, 1]] * 2

    class KeepFloat64(NumpyClassTasks):
        dtype = None

    assert KeepFloat64().sample(1, torch.Generator()).x_query.dtype == torch.float64

    class TokenTasks(CustomTasks):
        kind = "classification"
        num_classes = 2

        def draw_task(self, generator, split):
            tokens = torch.randint(0, 100, (4, 6), generator=generator)  # sequences of token ids
            labels = torch.tensor([0, 1, 0, 1])
            return tokens, labels, tokens.flip(0), labels.flip(0)

    batch = TokenTasks().sample(2, torch.Generator().manual_seed(0))
    assert batch.x_support.dtype == torch.int64 and batch.x_support.shape == (2, 4, 6)
    check_sampler(TokenTasks())


def test_config_records_the_class_and_json_attributes():
    config = LineTasks(shots=3).config()
    assert config == {"task": "custom", "class": f"{__name__}.LineTasks", "kind": "regression",
                      "num_classes": 0, "queries": 7, "shots": 3}
    with pytest.raises(TypeError, match="drawn with a torch.Generator, got int"):
        LineTasks().sample(2, 0)


class Draws(CustomTasks):
    """Returns whatever ``task_fn(generator)`` gives: a vehicle for malformed tasks."""
    kind = "classification"
    num_classes = 2

    def __init__(self, task_fn):
        self.task_fn = task_fn

    def draw_task(self, generator, split):
        return self.task_fn(generator)


def good(generator):
    x = torch.randn(4, 3, generator=generator)
    return x, torch.tensor([0, 0, 1, 1]), x + 1, torch.tensor([0, 1, 0, 1])


def varying_length(generator):
    n = int(torch.randint(2, 5, (), generator=generator))
    return torch.randn(n, 3), torch.zeros(n, dtype=torch.long), torch.randn(2, 3), torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize("task_fn, message", [
    (lambda g: good(g)[:3], r"must return \(x_support, y_support, x_query, y_query\), got tuple of length 3"),
    (lambda g: "abcd", "must return .* got str"),
    (varying_length, r"task \d of a batch has x_support of shape \(\d, 3\) but task 0 has"),
    (lambda g: (*good(g)[:3], torch.tensor([0.0, 1.0, 0.0, 1.0])),
     "task 0's y_query must hold integer class labels 0..1, got torch.float32"),
    (lambda g: (*good(g)[:3], torch.tensor([0, 1, 2, 1])), "y_query holds the label 2, outside 0..1"),
    (lambda g: (*good(g)[:3], torch.tensor(1)), "task 0's y_query must hold one row per example"),
    (lambda g: (good(g)[0], torch.tensor([0, 1, 1]), *good(g)[2:]),
     "x_support has 4 examples per task but y_support has 3"),
    (lambda g: (good(g)[0], {"a": 1}, *good(g)[2:]), "task 0's y_support is not a tensor or array"),
])
def test_malformed_tasks_are_refused_by_name(task_fn, message):
    with pytest.raises(SamplerError, match=message):
        Draws(task_fn).sample(3, torch.Generator().manual_seed(0))


def test_subclass_mistakes():
    class NoKind(CustomTasks):
        def draw_task(self, generator, split):
            return good(generator)

    with pytest.raises(SamplerError, match="kind must be one of"):
        NoKind().sample(1, torch.Generator())

    class NoDraw(CustomTasks):
        kind = "regression"

    with pytest.raises(NotImplementedError, match="must implement draw_task"):
        NoDraw().sample(1, torch.Generator())
    class ZeroWays(Draws):
        num_classes = 0

    with pytest.raises(SamplerError, match="num_classes >= 1"):
        ZeroWays(good).sample(1, torch.Generator())
    with pytest.raises(ValueError, match="number of tasks must be >= 1"):
        Draws(good).sample(0, torch.Generator())


def test_cpu_generator_passes_cpu_generators_through():
    g = torch.Generator().manual_seed(5)
    assert cpu_generator(g) is g


@requires_cuda
def test_cuda_sampler_and_generator():
    tasks = LineTasks(device="cuda")
    a = tasks.sample(3, torch.Generator(device="cuda").manual_seed(0))
    b = tasks.sample(3, torch.Generator(device="cuda").manual_seed(0))
    assert a.x_support.is_cuda and torch.equal(a.x_support, b.x_support)
    check_sampler(tasks)


def test_maml_meta_trains_on_user_tasks():
    torch.manual_seed(0)
    tasks = LineTasks(shots=10, queries=10)
    algorithm = build_algorithm("maml", MLP(sizes=(1, 16, 1)), meta_batch_size=4)
    optimizer = torch.optim.Adam([p for p in algorithm.parameters() if p.requires_grad], 1e-2)
    generator = torch.Generator().manual_seed(0)
    val = next(tasks.fixed_tasks("val", 20, 20, seed=0))
    before = algorithm.adapt_and_evaluate(val)["loss"].mean()
    theta_before = algorithm.theta0.detach().clone()
    for _ in range(30):
        batch = tasks.sample(4, generator)
        assert isinstance(batch, TaskBatch)
        loss, _ = algorithm.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(algorithm.theta0.grad).all() and algorithm.theta0.grad.abs().sum() > 0
        optimizer.step()
    after = algorithm.adapt_and_evaluate(val)["loss"]
    assert after.shape == (20,) and not torch.equal(algorithm.theta0, theta_before)
    assert after.mean() < before
