"""Meta-learned optimizers as drop-in ``torch.optim`` optimizers.

    from learnedopt.optim import TurtleOptimizer
    opt = TurtleOptimizer.from_pretrained("run/best.pt", model.parameters())
    loss.backward(); opt.step(); opt.zero_grad()

Every optimizer keeps each param group in one flat buffer (the parameters become views of it) and
steps it with one fused op (:mod:`learnedopt.ops`), whatever the number of tensors
(:mod:`learnedopt.optim._flat`). :mod:`learnedopt.optim.pretrained` reads and writes the rule files.
"""

from learnedopt.optim.lstm import LSTMOptimizer
from learnedopt.optim.metasgd import MetaSGD
from learnedopt.optim.pretrained import (PretrainedError, export_rule, load_rule, save_rule,
                                         shipped_rules)
from learnedopt.optim.turtle import TurtleOptimizer

__all__ = ["LSTMOptimizer", "TurtleOptimizer", "MetaSGD", "export_rule", "save_rule", "load_rule",
           "shipped_rules", "PretrainedError"]
