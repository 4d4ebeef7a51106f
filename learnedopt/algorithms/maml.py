"""MAML and first-order MAML (Finn et al. 2017; SPEC §4): theta_{t+1} = theta_t - a * g_t."""

from __future__ import annotations

from learnedopt.algorithms import _options
from learnedopt.algorithms.episodic import EpisodicAlgorithm, common_defaults


def maml_defaults(task: str, ways: int | None) -> dict:
    """Finn et al.'s settings. Sine: a = 0.01, one step, meta-batch 25; the test also takes one
    step, as in the Meta-SGD comparison that SPEC §7 quotes (MAML's own figure goes on to 10).
    Omniglot: 5-way a = 0.4, 1 step, meta-batch 32; 20-way (and more) a = 0.1, 5 steps,
    meta-batch 16; 10 steps at test. Image folders (miniImageNet): a = 0.01, 5 steps,
    meta-batch 4, 10 at test."""
    options = common_defaults(task)
    if task == "sine":
        options.update(inner_lr=0.01, inner_steps=1, test_inner_steps=1, meta_batch_size=25)
    elif task == "omniglot":
        if ways is not None and ways >= 20:
            options.update(inner_lr=0.1, inner_steps=5, test_inner_steps=10, meta_batch_size=16)
        else:
            options.update(inner_lr=0.4, inner_steps=1, test_inner_steps=10, meta_batch_size=32)
    else:
        options.update(inner_lr=0.01, inner_steps=5, test_inner_steps=10, meta_batch_size=4)
    return options


class MAML(EpisodicAlgorithm):
    """Second-order MAML by default; ``first_order=True`` is FO-MAML."""

    name = "maml"

    @classmethod
    def _defaults(cls, task, ways):
        return maml_defaults(task, ways)

    def __init__(self, learner, **options):
        super().__init__(learner, **options)
        _options.require(self.name, self._options["inner_lr"] > 0,
                         f"inner_lr must be > 0, got {self._options['inner_lr']}")

    def _step(self, theta, grad, loss, state, t, steps):
        return theta - self._options["inner_lr"] * grad, state


class FOMAML(MAML):
    """MAML with g treated as a constant (first_order defaults to True)."""

    name = "fomaml"

    @classmethod
    def _defaults(cls, task, ways):
        return {**maml_defaults(task, ways), "first_order": True}
