"""Every meta-learning algorithm behind one interface (:class:`MetaAlgorithm`), by name.

    from learnedopt.learners import MLP
    from learnedopt.algorithms import build_algorithm
    algorithm = build_algorithm("turtle", MLP(), first_order=True)
"""

from __future__ import annotations

from learnedopt.algorithms.base import MetaAlgorithm
from learnedopt.algorithms.lstm import EnhancedLSTM, MetaLSTM, MetaLSTMPlusPlus
from learnedopt.algorithms.maml import FOMAML, MAML
from learnedopt.algorithms.metasgd import MetaSGD
from learnedopt.algorithms.taml import TAML
from learnedopt.algorithms.transfer import BaselinePlusPlus, Finetuning, TrainFromScratch
from learnedopt.algorithms.turtle import Turtle

ALGORITHMS: dict[str, type[MetaAlgorithm]] = {cls.name: cls for cls in (
    MAML, FOMAML, MetaSGD, TAML, MetaLSTM, MetaLSTMPlusPlus, EnhancedLSTM, Turtle,
    TrainFromScratch, Finetuning, BaselinePlusPlus)}


def build_algorithm(name: str, learner, **options) -> MetaAlgorithm:
    """The algorithm ``name`` over ``learner`` with SPEC defaults for the learner's task family,
    overridden by ``options`` (values may be strings, as from ``--opt key=value``)."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(ALGORITHMS)}") from None
    return cls(learner, **options)


__all__ = ["ALGORITHMS", "MetaAlgorithm", "build_algorithm", "MAML", "FOMAML", "MetaSGD", "TAML",
           "MetaLSTM", "MetaLSTMPlusPlus", "EnhancedLSTM", "Turtle", "TrainFromScratch",
           "Finetuning", "BaselinePlusPlus"]
