"""check_sampler: the package's own samplers pass it, and each kind of protocol mistake in a user
sampler is caught with an error that names it."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from learnedopt.tasks import (ImageFolderTasks, OmniglotTasks, SamplerError, SineTasks,
                              TaskBatch, check_sampler)
from learnedopt.tasks.base import fixed_task_batches
from learnedopt.tasks.sampler_check import check_task_batch
from tests.fewshot_data import tiny_image_folder, tiny_omniglot  # noqa: F401 (fixtures)

WAYS, SHOTS, QUERIES, FEATURES = 3, 2, 4, 5


class ToySampler:
    """A correct user sampler written from scratch (no package base class): WAYS-way tasks of
    FEATURES-dim vectors, each class a Gaussian around a random centre. The variants below each
    break one rule by overriding one piece."""
    kind = "classification"
    num_classes = WAYS
    device = torch.device("cpu")

    def draw(self, count: int, generator: torch.Generator) -> TaskBatch:
        centres = torch.randn(count, WAYS, 1, FEATURES, generator=generator)
        x = centres + 0.1 * torch.randn(count, WAYS, SHOTS + QUERIES, FEATURES, generator=generator)
        labels = torch.arange(WAYS)
        return TaskBatch(x[:, :, :SHOTS].reshape(count, -1, FEATURES),
                         labels.repeat_interleave(SHOTS).expand(count, -1).contiguous(),
                         x[:, :, SHOTS:].reshape(count, -1, FEATURES),
                         labels.repeat_interleave(QUERIES).expand(count, -1).contiguous())

    def sample(self, batch_size, generator):
        return self.draw(batch_size, generator)

    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        return fixed_task_batches(self.draw, split, num_tasks, batch_size, seed)

    def config(self):
        return {"task": "toy", "ways": WAYS, "features": [FEATURES]}


def replace(batch: TaskBatch, **fields) -> TaskBatch:
    values = {name: getattr(batch, name) for name in ("x_support", "y_support", "x_query", "y_query")}
    return TaskBatch(**{**values, **fields})


class Broken(ToySampler):
    """ToySampler with ``sample`` post-processed by ``edit(batch, generator)``."""
    def __init__(self, edit):
        self.edit = edit

    def sample(self, batch_size, generator):
        return self.edit(super().sample(batch_size, generator), generator)


def without(name):
    """A ToySampler class with the attribute or method ``name`` removed."""
    namespace = {name: property(lambda self: (_ for _ in ()).throw(AttributeError(name)))}
    cls = type(f"ToyWithout_{name}", (ToySampler,), namespace)
    return cls()


class GlobalRNG(ToySampler):
    def sample(self, batch_size, generator):
        return self.draw(batch_size, torch.default_generator)


class PythonRandom(ToySampler):
    def sample(self, batch_size, generator):
        return self.draw(batch_size, torch.Generator().manual_seed(random.randrange(2**31)))


class IgnoresGenerator(ToySampler):
    def sample(self, batch_size, generator):
        return self.draw(batch_size, torch.Generator().manual_seed(1234))


class ClonesGenerator(ToySampler):
    """Reseeds a copy from the generator's seed: reproducible, but every call gives one batch."""
    def sample(self, batch_size, generator):
        return self.draw(batch_size, torch.Generator().manual_seed(generator.initial_seed()))


class BatchSizeDependentFixed(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        for start in range(0, num_tasks, batch_size):
            yield self.draw(min(batch_size, num_tasks - start),
                            torch.Generator().manual_seed(seed + start))


class FixedIgnoresSeed(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        return fixed_task_batches(self.draw, split, num_tasks, batch_size, 0)


class FixedTooFew(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        return fixed_task_batches(self.draw, split, max(1, num_tasks - 1), batch_size, seed)


class FixedNotIterable(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        return self.draw(num_tasks, torch.Generator().manual_seed(seed))  # a TaskBatch, not a list


class FixedSameForEverySplit(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        return fixed_task_batches(self.draw, "any", num_tasks, batch_size, seed)


class FixedOtherShape(ToySampler):
    def fixed_tasks(self, split, num_tasks, batch_size, seed):
        for batch in super().fixed_tasks(split, num_tasks, batch_size, seed):
            yield replace(batch, x_support=batch.x_support[..., :-1], x_query=batch.x_query[..., :-1])


class SampleRaises(ToySampler):
    def sample(self, batch_size, generator):
        raise KeyError("no such class")


class Flat(ToySampler):
    """With a sample_flat, correct unless ``edit`` changes its result."""
    def __init__(self, edit=None):
        self.edit = edit or (lambda x, y, n: (x, y, n))

    def sample_flat(self, batch_size, generator):
        x = torch.randn(batch_size, FEATURES, generator=generator)
        y = torch.randint(0, 10, (batch_size,), generator=generator)
        return self.edit(x, y, 10)


class NotJSONConfig(ToySampler):
    def config(self):
        return {"task": "toy", "scale": torch.tensor(2.0)}


def _shift_labels(b, g):
    return replace(b, y_query=b.y_query + 5)  # global class ids instead of 0..N-1


MISTAKES = [
    (without("kind"), "missing attribute 'kind'"),
    (without("device"), "missing attribute 'device'"),
    (without("sample"), r"missing method sample\(batch_size, generator\)"),
    (without("fixed_tasks"), r"missing method fixed_tasks\(split, num_tasks, batch_size, seed\)"),
    (without("config"), r"missing method config\(\)"),
    (type("WrongKind", (ToySampler,), {"kind": "classify"})(), "kind must be one of"),
    (type("NoClasses", (ToySampler,), {"num_classes": 0})(), "needs num_classes >= 1"),
    (type("StrClasses", (ToySampler,), {"num_classes": "3"})(), "num_classes must be an int"),
    (NotJSONConfig(), r"config\(\)\['scale'\] is a Tensor, not a JSON value"),
    (Broken(lambda b, g: (b.x_support, b.y_support, b.x_query, b.y_query)),
     "expected a learnedopt.tasks.TaskBatch, got tuple"),
    (Broken(lambda b, g: replace(b, y_support=b.y_support.tolist())),
     "y_support must be a torch.Tensor"),
    (Broken(lambda b, g: replace(b, x_support=b.x_support[:-1], y_support=b.y_support[:-1])),
     "the four tensors must hold the same number of tasks"),
    (Broken(lambda b, g: b.task(0)), "asked for 3 tasks, got 1"),
    (Broken(lambda b, g: replace(b, x_support=b.x_support[:, :-1])),
     "x_support has 5 examples per task but y_support has 6"),
    (Broken(lambda b, g: replace(b, x_query=b.x_query[..., :-1])),
     r"x_support and x_query must have the same shape per example, got \(5,\) and \(4,\)"),
    (Broken(lambda b, g: replace(b, x_query=b.x_query.double())),
     "x_support is torch.float32 but x_query is torch.float64"),
    (Broken(lambda b, g: replace(b, y_support=b.y_support[..., None], y_query=b.y_query[..., None])),
     "classification y_support must be one label per example"),
    (Broken(_shift_labels), r"y_query holds the label [5-7], outside 0..2"),
    (Broken(lambda b, g: replace(b, y_support=b.y_support.float(), y_query=b.y_query.float())),
     "classification labels must be int64"),
    (Broken(lambda b, g: replace(b, x_support=b.x_support.index_fill(2, torch.tensor([1]), float("nan")))),
     "x_support holds 18 NaN or infinite values"),
    (Broken(lambda b, g: replace(b, x_query=b.x_query.to("meta"))),
     "x_query is on meta but the sampler's device is cpu"),
    (Broken(lambda b, g: replace(b, x_support=b.x_support.bool(), x_query=b.x_query.bool())),
     "x must be a real floating-point"),
    (SampleRaises(), r"sample\(3, generator\) raised KeyError: 'no such class'"),
    (GlobalRNG(), "used torch's global random generator"),
    (PythonRandom(), "sample\\(\\) is not reproducible"),
    (IgnoresGenerator(), "sample\\(\\) ignores its generator"),
    (ClonesGenerator(), "same tasks on consecutive calls with one generator"),
    (BatchSizeDependentFixed(), "different tasks in batches of 4 and of 1"),
    (FixedIgnoresSeed(), "ignores its seed"),
    (FixedTooFew(), "gave 3 tasks in all, not 4"),
    (FixedNotIterable(), "must return an iterable of TaskBatch, got TaskBatch"),
    (FixedOtherShape(), r"fixed_tasks\('val'\) has per-example x \(4,\), sample\(\) has \(5,\)"),
    (Flat(lambda x, y, n: (x, y)), r"must return a tuple \(x, y, num_labels\)"),
    (Flat(lambda x, y, n: (x, y, 5)), "y holds labels outside 0..4"),
    (Flat(lambda x, y, n: (x[:, :2], y, n)), r"x examples are torch.float32 \(2,\), the tasks' are"),
    (Flat(lambda x, y, n: (x, y.float(), n)), "y must be int64 class indices"),
    (Flat(lambda x, y, n: (x[:2], y, n)), "x must hold 3 examples"),
]


@pytest.mark.parametrize("sampler, message", MISTAKES,
                         ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(MISTAKES)])
def test_each_mistake_is_named(sampler, message):
    with pytest.raises(SamplerError, match=message):
        check_sampler(sampler)


def test_a_correct_sampler_passes_and_is_summarised():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = check_sampler(Flat())
    assert (summary.kind, summary.num_classes) == ("classification", WAYS)
    assert (summary.support_size, summary.query_size) == (WAYS * SHOTS, WAYS * QUERIES)
    assert summary.x_shape == (FEATURES,) and summary.y_shape == ()
    assert summary.x_dtype == torch.float32 and summary.y_dtype == torch.int64
    assert summary.has_sample_flat and not check_sampler(ToySampler()).has_sample_flat


def test_the_global_rng_is_left_as_it_was():
    before = torch.get_rng_state()
    check_sampler(ToySampler())
    assert torch.equal(before, torch.get_rng_state())


def test_identical_validation_and_test_tasks_warn():
    with pytest.warns(UserWarning, match="'val'\\) and fixed_tasks\\('test'\\) are the same"):
        check_sampler(FixedSameForEverySplit())


def test_regression_samplers():
    assert check_sampler(SineTasks(k_shot=4, k_query=6)).y_shape == (1,)

    class IntegerTargets(SineTasks):
        def sample(self, batch_size, generator):
            b = super().sample(batch_size, generator)
            return replace(b, y_support=b.y_support.long(), y_query=b.y_query.long())

    with pytest.raises(SamplerError, match="regression targets must be floating point"):
        check_sampler(IntegerTargets())

    class ClassCount(SineTasks):
        num_classes = 1

    with pytest.raises(SamplerError, match="a regression sampler has num_classes = 0"):
        check_sampler(ClassCount())

    class FlatTargetShape(SineTasks):
        def sample_flat(self, batch_size, generator):
            x, y, n = super().sample_flat(batch_size, generator)
            return x, y[:, 0], n

    with pytest.raises(SamplerError, match=r"y targets are torch.float32 \(\), the tasks' are"):
        check_sampler(FlatTargetShape())


def test_builtin_image_samplers_pass(tiny_image_folder, tiny_omniglot, tmp_path):
    tasks = ImageFolderTasks(tiny_image_folder, ways=3, shots=1, queries=2, image_size=8,
                             cache_dir=tmp_path)
    summary = check_sampler(tasks)
    assert summary.x_shape == (3, 8, 8) and summary.support_size == 3
    omniglot = OmniglotTasks(tiny_omniglot["zips"], ways=5, shots=1, queries=2, image_size=14,
                             cache_dir=tmp_path)
    assert check_sampler(omniglot).x_shape == (1, 14, 14)


def test_check_task_batch_on_a_good_batch():
    batch = ToySampler().sample(2, torch.Generator().manual_seed(0))
    check_task_batch(batch, "classification", WAYS, "cpu", num_tasks=2)
    with pytest.raises(SamplerError, match="asked for 3 tasks"):
        check_task_batch(batch, "classification", WAYS, "cpu", num_tasks=3)
