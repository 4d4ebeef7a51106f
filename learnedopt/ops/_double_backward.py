"""The ops' backward kernels are differentiated zero times: say so clearly when someone tries.

Second-order meta-training never needs it: the second-order term reaches the meta-parameters through
the learner's own double backward (the graph of the gradient ``g`` fed into the op), and the op is
differentiated once. Without this, torch would only warn that no autograd kernel is registered and
return gradients that silently lack the second-order term.
"""

from __future__ import annotations

import torch


def refuse_double_backward(op_name: str) -> None:
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op_name} is not differentiable: the fused learnedopt ops support one backward pass. "
            "Second-order meta-gradients do not need more (they flow through the gradient input "
            "via the learner's own double backward). To differentiate an op's backward itself, "
            "use learnedopt.ops.set_backend('reference').")

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)
