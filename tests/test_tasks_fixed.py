"""Fixed validation/test tasks: the same tasks whatever batch size they are drawn in."""

from __future__ import annotations

import torch

from learnedopt.tasks.base import FIXED_TASK_CHUNK, TaskBatch, fixed_task_batches
from learnedopt.tasks.sine import SineTasks


def _cat(batches: list[TaskBatch]) -> list[torch.Tensor]:
    return [torch.cat([getattr(b, f) for b in batches])
            for f in ("x_support", "y_support", "x_query", "y_query")]


def test_fixed_sine_tasks_do_not_depend_on_the_batch_size():
    tasks = SineTasks(k_shot=5, k_query=7)
    total = 2 * FIXED_TASK_CHUNK + 37
    reference = _cat(list(tasks.fixed_tasks("test", total, total, seed=3)))
    for batch_size in (1, 13, FIXED_TASK_CHUNK, 250):
        batches = list(tasks.fixed_tasks("test", total, batch_size, seed=3))
        assert [b.num_tasks for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        assert sum(b.num_tasks for b in batches) == total
        for a, b in zip(_cat(batches), reference):
            assert torch.equal(a, b)


def test_fixed_tasks_differ_between_splits_and_seeds():
    tasks = SineTasks()
    val = _cat(list(tasks.fixed_tasks("val", 50, 50, seed=0)))
    test = _cat(list(tasks.fixed_tasks("test", 50, 50, seed=0)))
    other_seed = _cat(list(tasks.fixed_tasks("val", 50, 50, seed=1)))
    assert not torch.equal(val[0], test[0]) and not torch.equal(val[0], other_seed[0])


def test_fixed_task_batches_refuses_empty_requests():
    import pytest
    with pytest.raises(ValueError, match="num_tasks and batch_size"):
        list(fixed_task_batches(SineTasks().sample, "val", 0, 10, 0))
