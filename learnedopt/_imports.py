"""Import paths of user objects ("package.module:attribute"), as the CLI takes them and run
configs record them, so that ``eval`` and ``--resume`` rebuild a user's model, tasks and loss."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def import_object(path: str, what: str = "object") -> Any:
    """The object named by ``"package.module:attribute"`` (``attribute`` may be dotted,
    ``"pkg.nets:Zoo.resnet12"``). Errors say which part failed to resolve."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"{what} import path must look like 'package.module:attribute', got {path!r}")
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} import path must look like 'package.module:attribute', got {path!r}")
    try:
        obj: Any = _import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({exc}); is it "
                         f"installed or on PYTHONPATH?") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute "
                             f"{attribute!r}") from None
    return obj


def _import_module(name: str):
    """importlib.import_module, also finding modules in the working directory, as ``python -m``
    does (the ``learnedopt`` console script, unlike ``python -m learnedopt``, does not put it on
    sys.path, and a user's own package usually sits there)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.partition(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def import_path_of(obj: Any) -> str | None:
    """``"module:qualname"`` when importing it gives back ``obj`` itself, else None (a lambda, a
    closure, an object defined in ``__main__`` or built at run time)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    path = f"{module}:{qualname}"
    try:
        return path if import_object(path) is obj else None
    except ValueError:
        return None


def build_from_path(path: str, kwargs: dict[str, Any] | None, what: str) -> Any:
    """Import ``path``; call it with ``kwargs`` when it is a class or function (a factory),
    return it as it is otherwise (an instance defined at module level, which takes no kwargs)."""
    obj = import_object(path, what)
    if callable(obj) and not _is_instance_to_use(obj):
        try:
            return obj(**(kwargs or {}))
        except TypeError as exc:
            raise ValueError(f"{what} {path!r}: calling it with {kwargs or {}} failed: {exc}") from exc
    if kwargs:
        raise ValueError(f"{what} {path!r} is an instance, not a factory: it takes no arguments "
                         f"(got {kwargs})")
    return obj


def given_or_built(given: Any, spec: dict[str, Any], what: str, keyword: str, flag: str) -> Any:
    """``given`` when the caller handed the object in, else what the spec's recorded factory
    (``spec["factory"]`` with ``spec["kwargs"]``) builds; an error says how to supply it when the
    spec recorded none (the object had been handed in from Python)."""
    if given is not None:
        return given
    factory = spec.get("factory")
    if not factory:
        raise ValueError(f"the {what} was handed in as a Python object (no import path was "
                         f"recorded): pass it again ({keyword}=...), or use an importable factory "
                         f"({flag} package.module:function)")
    return build_from_path(factory, spec.get("kwargs"), what)


def _is_instance_to_use(obj: Any) -> bool:
    # An nn.Module instance is callable (its forward) but is the object itself, not a factory; so
    # is any sampler instance with __call__.
    import torch
    return isinstance(obj, torch.nn.Module) or (not isinstance(obj, type) and hasattr(obj, "sample"))
