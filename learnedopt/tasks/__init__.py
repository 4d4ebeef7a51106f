"""Few-shot task samplers: sine regression, Omniglot, generic image folders, and your own tasks
(a CustomTasks subclass, episodes over any map-style data set, any object check_sampler accepts)."""

from learnedopt.tasks.base import TaskBatch, TaskSampler
from learnedopt.tasks.custom import CustomTasks
from learnedopt.tasks.dataset_episodes import EpisodeTasks
from learnedopt.tasks.episodes import ClassPool
from learnedopt.tasks.folder_dataset import ImageFolderDataset
from learnedopt.tasks.image_folder import ImageFolderTasks
from learnedopt.tasks.omniglot import OmniglotTasks
from learnedopt.tasks.sampler_check import SamplerError, SamplerSummary, check_sampler
from learnedopt.tasks.sine import SineTasks

__all__ = ["TaskBatch", "TaskSampler", "SineTasks", "OmniglotTasks", "ImageFolderTasks",
           "ClassPool", "CustomTasks", "EpisodeTasks", "ImageFolderDataset", "check_sampler",
           "SamplerError", "SamplerSummary"]
