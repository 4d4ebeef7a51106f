"""learnedopt: learned optimizers (meta-learner LSTM, TURTLE) on fused C++/CUDA kernels.

``learnedopt.ops`` holds the fused ops and their backend choice, ``learnedopt.reference`` their
pure-PyTorch twins. ``python -m learnedopt`` (or ``learnedopt info``) prints which kernels this
build has. "SPEC §N" in the docstrings is section N of docs/SPEC.md in the repository, the math
every algorithm implements.
"""

from learnedopt import ops, reference
from learnedopt._extension import compiled_devices

__version__ = "0.1.0"
__all__ = ["ops", "reference", "compiled_devices", "__version__"]
