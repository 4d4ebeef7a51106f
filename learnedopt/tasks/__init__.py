"""Few-shot task samplers: sine regression, Omniglot, generic image folders."""

from learnedopt.tasks.base import TaskBatch, TaskSampler
from learnedopt.tasks.episodes import ClassPool
from learnedopt.tasks.image_folder import ImageFolderTasks
from learnedopt.tasks.omniglot import OmniglotTasks
from learnedopt.tasks.sine import SineTasks

__all__ = ["TaskBatch", "TaskSampler", "SineTasks", "OmniglotTasks", "ImageFolderTasks",
           "ClassPool"]
