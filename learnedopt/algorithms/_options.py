"""Option handling shared by every algorithm: defaults per task, checked names, typed values.

Options arrive from Python (already typed) or from the command line's ``--opt key=value``
(strings); strings are converted to the type of the option's default so that both routes give
the same ``options()`` record.
"""

from __future__ import annotations

import json


def task_of(learner) -> str:
    """The task family whose SPEC defaults apply: "sine", "omniglot" or "images"."""
    return learner.task_family


def _convert(algorithm: str, key: str, value, default):
    if not isinstance(value, str) or isinstance(default, str):
        return value
    text = value.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{algorithm}: option {key} expects true/false, got {value!r}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{algorithm}: option {key}={value!r} is not a number/JSON value") from None
    if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = float(parsed)
    return parsed


def resolve(algorithm: str, defaults: dict, given: dict) -> dict:
    """``defaults`` updated with ``given``; unknown names and mistyped values raise ValueError."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{algorithm}: unknown option(s) {unknown}; valid options: {sorted(defaults)}")
    options = dict(defaults)
    for key, value in given.items():
        value = _convert(algorithm, key, value, defaults[key])
        default = defaults[key]
        if default is not None and value is not None:
            numeric = (int, float)
            same = (isinstance(value, bool) == isinstance(default, bool)) and (
                isinstance(value, type(default))
                or (isinstance(default, numeric) and isinstance(value, numeric)))
            if not same:
                raise ValueError(f"{algorithm}: option {key} must be of type "
                                 f"{type(default).__name__}, got {value!r}")
            if isinstance(default, float):
                value = float(value)
        options[key] = value
    return options


def require(algorithm: str, condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{algorithm}: {message}")
