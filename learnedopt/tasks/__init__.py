"""Few-shot task samplers: sine regression, Omniglot, generic image folders."""

from learnedopt.tasks.base import TaskBatch, TaskSampler

__all__ = ["TaskBatch", "TaskSampler"]
