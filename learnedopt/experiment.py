"""From JSON-able specs (what configs and checkpoints record) to live objects: the task sampler,
the learner and the algorithm. Training, evaluation, plots and the CLI all build through here, so a
checkpoint rebuilds exactly what was trained.

Task spec:    {"name": "sine", "shots": 10, "queries": 10}
              {"name": "omniglot", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "split": "vinyals", "image_size": 28}   (optional: "rotations", "within_alphabet",
               "val_alphabets": the OmniglotTasks arguments of those names)
              {"name": "images", "data_root": ..., "ways": 5, "shots": 1, "queries": 15,
               "image_size": 84}
              {"name": "custom", "factory": "mypkg.data:tasks", "kwargs": {...}}   (a user sampler:
               the factory returns it; "factory": None when it was handed in as a Python object)
              {"name": "navigation2d", "reward": "distance"}   (meta-RL, learnedopt.rl; "squared")
Learner spec: learnedopt.learners' config(), e.g. {"name": "mlp", "sizes": [1, 40, 40, 1]},
              {"name": "conv4", "ways": 5, "in_shape": [1, 28, 28], "filters": 64, ...} or
              {"name": "module", "factory": "mypkg.nets:resnet12", "kwargs": {...}, "loss": ...,
               "head": "fc", ...} (a user nn.Module; "loss": "auto" picks MSE or cross-entropy
               from the task's kind)
              {"name": "policy", "factory": ..., "kwargs": {...}, ...} (a policy, learnedopt.rl)

User objects handed in from Python (``model=``, ``tasks=``) take the place of what the specs
would import; the specs still record their import paths where they have them.
"""

from __future__ import annotations

from typing import Any

import torch

TASKS = ("sine", "omniglot", "images", "custom", "navigation2d")
# Task spec keys only the Omniglot sampler takes (the image folders have no alphabets or rotations).
OMNIGLOT_ONLY_KEYS = ("rotations", "within_alphabet", "val_alphabets")


def build_sampler(spec: dict[str, Any], device: str | torch.device = "cpu", tasks=None):
    """The task sampler of ``spec`` on ``device``; for a "custom" spec, ``tasks`` (a sampler
    object) or else the one the recorded factory returns."""
    name = spec.get("name")
    if name == "custom":
        return _custom_sampler(spec, device, tasks)
    if tasks is not None:
        raise ValueError(f"a tasks object was given but the task spec is {name!r}; user tasks "
                         f"need the spec {{'name': 'custom', ...}}")
    if name == "sine":
        from learnedopt.tasks.sine import SineTasks
        return SineTasks(k_shot=spec.get("shots", 10), k_query=spec.get("queries", 10), device=device)
    if name == "navigation2d":
        from learnedopt.rl import navigation_tasks
        return navigation_tasks(spec, device)
    if name in ("omniglot", "images"):
        if not spec.get("data_root"):
            raise ValueError(f"task {name!r} needs a data root (--data-root DIR)")
        kwargs = {k: spec[k] for k in ("ways", "shots", "queries", "image_size", "split", "cache_dir")
                  if spec.get(k) is not None}
        omniglot_only = [k for k in OMNIGLOT_ONLY_KEYS if spec.get(k) is not None]
        if name == "omniglot":
            kwargs.update({k: spec[k] for k in omniglot_only})
        elif omniglot_only:
            raise ValueError(f"task {name!r} does not take {', '.join(omniglot_only)} (Omniglot "
                             f"only)")
        if name == "omniglot":
            from learnedopt.tasks.omniglot import OmniglotTasks as sampler_class
        else:
            from learnedopt.tasks.image_folder import ImageFolderTasks as sampler_class
        return sampler_class(spec["data_root"], device=device, **kwargs)
    raise ValueError(f"unknown task {name!r}: expected one of {TASKS}")


def _custom_sampler(spec: dict[str, Any], device, tasks):
    from learnedopt import _imports
    tasks = _imports.given_or_built(tasks, spec, "tasks", "tasks", "--tasks")
    from learnedopt.tasks.sampler_check import check_sampler
    check_sampler(tasks)  # draws a few tasks: a broken sampler fails here, named, not mid-run
    if torch.device(tasks.device) != torch.device(device):
        raise ValueError(f"the tasks are on {tasks.device} but the run is on {device}: make the "
                         f"sampler produce tensors on {device} (or run with --device {tasks.device})")
    return tasks


def sampler_config(sampler) -> dict[str, Any]:
    """What the tasks were, for checkpoints and results ({} when the sampler cannot say)."""
    config = getattr(sampler, "config", None)
    return dict(config()) if callable(config) else {}


def default_learner_spec(task_spec: dict[str, Any], sampler) -> dict[str, Any]:
    """The paper learner for the task (1-40-40-1 ReLU MLP for sine, Conv4 for images), as the
    config dict :func:`build_learner` takes back."""
    from learnedopt import learners
    if task_spec.get("name") == "navigation2d":
        from learnedopt.rl.policy import default_policy_spec
        return default_policy_spec()  # MAML's Gaussian MLP policy
    if task_spec.get("name") == "custom":
        raise ValueError("user tasks have no paper learner: give a model (--model "
                         "package.module:function, or model=...)")
    return learners.learner_for_task(sampler).config()


def build_learner(spec: dict[str, Any], sampler=None, model=None, **module_options):
    """The learner of ``spec``; a module learner's model may be handed in (``model``), and
    its "auto" loss becomes MSE or cross-entropy after the ``sampler``'s kind."""
    from learnedopt import learners
    spec = dict(spec)
    if spec.get("name") == "module" and getattr(sampler, "kind", None) == "rl":
        # A user module on a meta-RL task is a policy: forward(observations) -> (mean, log_std).
        spec = {"name": "policy", "factory": spec.get("factory"), "kwargs": spec.get("kwargs"),
                "batching": spec.get("batching", "auto")}
    if spec.get("name") == "policy":
        from learnedopt.rl.policy import build_policy_learner
        return build_policy_learner(spec, model)
    if spec.get("name") == "module" and spec.get("loss", "auto") == "auto":
        if sampler is None or getattr(sampler, "kind", None) not in ("regression", "classification"):
            raise ValueError("the model's loss is 'auto' but the tasks are neither regression nor "
                             "classification: give the loss (--loss, or loss=...)")
        spec["loss"] = "mse" if sampler.kind == "regression" else "cross_entropy"
    return learners.build_learner(spec, model=model, **module_options)


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
    if getattr(learner, "kind", None) == "policy":  # meta-RL: the algorithm's rule adapts a policy
        from learnedopt.rl.meta_rl import build_meta_rl
        return build_meta_rl(name, learner, **options)
    cls = algorithms.ALGORITHMS.get(name)
    if (sampler is not None and cls is not None and cls.pretrains_flat
            and sampler.kind == "classification" and not options.get("num_pretrain_classes")):
        probe = torch.Generator(device=sampler.device).manual_seed(0)
        options["num_pretrain_classes"] = int(sampler.sample_flat(1, probe)[2])
    return algorithms.build_algorithm(name, learner, **options)
