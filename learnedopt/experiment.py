"""From JSON-able specs (what configs and checkpoints record) to live objects: the task sampler,
the learner and the algorithm. Training, evaluation, plots and the CLI all build through here, so a
checkpoint rebuilds exactly what was trained.

Task spec:    {"name": "sine", "shots": 10, "queries": 10}
              {"name": "omniglot", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "split": "vinyals", "image_size": 28}
              {"name": "images", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "image_size": 84}
Learner spec: learnedopt.learners' config(), e.g. {"name": "mlp", "sizes": [1, 40, 40, 1]} or
              {"name": "conv4", "ways": 5, "in_shape": [1, 28, 28], "filters": 64, ...}
"""

from __future__ import annotations

from typing import Any

import torch

TASKS = ("sine", "omniglot", "images")


def build_sampler(spec: dict[str, Any], device: str | torch.device = "cpu"):
    name = spec.get("name")
    if name == "sine":
        from learnedopt.tasks.sine import SineTasks
        return SineTasks(k_shot=spec.get("shots", 10), k_query=spec.get("queries", 10), device=device)
    if name in ("omniglot", "images"):
        if not spec.get("data_root"):
            raise ValueError(f"task {name!r} needs a data root (--data-root DIR)")
        kwargs = {k: spec[k] for k in ("ways", "shots", "queries", "image_size", "split", "cache_dir")
                  if spec.get(k) is not None}
        if name == "omniglot":
            from learnedopt.tasks.omniglot import OmniglotTasks as sampler_class
        else:
            from learnedopt.tasks.image_folder import ImageFolderTasks as sampler_class
        return sampler_class(spec["data_root"], device=device, **kwargs)
    raise ValueError(f"unknown task {name!r}: expected one of {TASKS}")


def default_learner_spec(task_spec: dict[str, Any], sampler) -> dict[str, Any]:
    """The paper learner for the task (1-40-40-1 ReLU MLP for sine, Conv4 for images), as the
    config dict :func:`build_learner` takes back."""
    from learnedopt import learners
    return learners.learner_for_task(sampler).config()


def build_learner(spec: dict[str, Any]):
    from learnedopt import learners
    return learners.build_learner(spec)


def check_algorithm_name(name: str) -> None:
    """Refuse an unknown algorithm before anything slow (decoding a data set) happens."""
    from learnedopt import algorithms
    if name not in algorithms.ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(algorithms.ALGORITHMS)}")


def build_algorithm(name: str, learner, options: dict[str, Any], sampler=None):
    """``options`` override the algorithm's defaults for the learner's task; unknown names and
    mistyped values are refused by the algorithm with the list of valid options.

    With a classification ``sampler``, a transfer baseline's pre-training head is sized to the
    sampler's training classes (``num_pretrain_classes``) unless the options set it: the head must
    exist before the outer optimizer is built over the algorithm's parameters."""
    from learnedopt import algorithms
    options = dict(options)
    cls = algorithms.ALGORITHMS.get(name)
    if (sampler is not None and cls is not None and cls.pretrains_flat
            and sampler.kind == "classification" and not options.get("num_pretrain_classes")):
        probe = torch.Generator(device=sampler.device).manual_seed(0)
        options["num_pretrain_classes"] = int(sampler.sample_flat(1, probe)[2])
    return algorithms.build_algorithm(name, learner, **options)
