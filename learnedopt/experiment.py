"""From JSON-able specs (what configs and checkpoints record) to live objects: the task sampler,
the learner and the algorithm. Training, evaluation, plots and the CLI all build through here, so a
checkpoint rebuilds exactly what was trained.

Task spec:    {"name": "sine", "shots": 10, "queries": 10}
              {"name": "omniglot", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "split": "vinyals", "image_size": 28}
              {"name": "images", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "image_size": 84}
Learner spec: {"name": "mlp", "sizes": [1, 40, 40, 1]} or
              {"name": "conv4", "in_channels": 1, "image_size": 28, "ways": 5}
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
    """The SPEC learner for a task: 1-40-40-1 ReLU MLP for sine, Conv4 for images."""
    if task_spec["name"] == "sine":
        return {"name": "mlp", "sizes": [1, 40, 40, 1]}
    batch = sampler.sample(1, torch.Generator(device=sampler.device).manual_seed(0))
    channels, size = batch.x_support.shape[2], batch.x_support.shape[-1]
    return {"name": "conv4", "in_channels": int(channels), "image_size": int(size),
            "ways": int(sampler.num_classes)}


def build_learner(spec: dict[str, Any]):
    from learnedopt import learners
    if hasattr(learners, "build_learner"):
        return learners.build_learner(**spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "mlp":
        return learners.MLP(**kwargs)
    if spec["name"] == "conv4":
        return learners.Conv4(**kwargs)
    raise ValueError(f"unknown learner {spec['name']!r}: expected 'mlp' or 'conv4'")


def algorithm_class(name: str):
    from learnedopt import algorithms
    registry = getattr(algorithms, "ALGORITHMS", None)
    if registry is None:
        raise RuntimeError("learnedopt.algorithms has no ALGORITHMS registry in this build")
    if name not in registry:
        raise ValueError(f"unknown algorithm {name!r}: expected one of {sorted(registry)}")
    return registry[name]


def resolve_options(name: str, task: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The algorithm's SPEC defaults for ``task`` with ``overrides`` on top; an option the
    algorithm does not have is an error naming the ones it has."""
    defaults = algorithm_class(name).option_defaults(task)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"algorithm {name!r} has no option(s) {unknown}; its options are "
                         f"{sorted(defaults)}")
    return {**defaults, **overrides}


def build_algorithm(name: str, learner, options: dict[str, Any]):
    from learnedopt import algorithms
    if hasattr(algorithms, "build_algorithm"):
        return algorithms.build_algorithm(name, learner, **options)
    return algorithm_class(name)(learner, **options)
