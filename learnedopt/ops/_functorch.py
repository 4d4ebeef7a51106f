"""The fused ops under torch.func transforms (grad, vjp, jacrev, vmap, functional_call).

functorch refuses C++ ``torch::autograd::Function``s, which is what the ops' Autograd kernels
are (csrc/autograd/). So while a torch.func transform is active, the op wrappers in
learnedopt/ops/*.py route the call through the Python ``torch.autograd.Function``s here instead:
they run the same forward and ``*_backward`` ops below autograd, with ``setup_context`` (which
functorch requires) and a generated vmap rule. Outside torch.func nothing changes: the wrappers
take the C++ autograd path, and this module costs them one C call (:func:`active`).

As on the C++ path, an op's backward is differentiable zero times: its outputs carry a node that
raises a clear error if a second differentiation reaches it (say ``grad(grad(...))``), instead of
silently dropping the second-order terms.
"""

from __future__ import annotations

import torch

_NOT_DIFFERENTIABLE = (
    "{op} is not differentiable: the fused learnedopt ops support one backward pass. "
    "Second-order meta-gradients do not need more (they flow through the gradient input via the "
    "learner's own double backward). To differentiate an op's backward itself, use "
    "learnedopt.ops.set_backend('reference').")


def active() -> bool:
    """Whether a torch.func transform is running (then the C++ autograd kernels cannot be used)."""
    return torch._C._are_functorch_transforms_active()


def _below_autograd(op, *args):
    # The ops' Autograd kernels record C++ Functions, which functorch refuses; the gradient is
    # this module's business here.
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        return op(*args)


class _BackwardOp(torch.autograd.Function):
    """Runs a backward op, ``call(*args)`` -> a tuple of tensors, as a node that exists only to
    refuse a further differentiation: it takes every tensor the op reads as an input, so that any
    transform differentiating the result reaches it and raises, rather than seeing a constant."""
    generate_vmap_rule = True

    @staticmethod
    def forward(op_name, call, *args):
        return tuple(_below_autograd(call, *args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op_name = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NOT_DIFFERENTIABLE.format(op=ctx.op_name))


class Preprocess(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, p, log_eps, strict):
        return _below_autograd(torch.ops.learnedopt.preprocess.default, x, p, log_eps, strict)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.p, ctx.log_eps, ctx.strict = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        (d_x,) = _BackwardOp.apply("learnedopt::preprocess_backward", _preprocess_backward, grad_out,
                                   x, ctx.p, ctx.log_eps, ctx.strict)
        return d_x, None, None, None


class MetaLSTMStep(torch.autograd.Function):
    """Arguments: the 15 tensor inputs of meta_lstm_step in schema order, then p, log_eps, strict."""
    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return tuple(_below_autograd(torch.ops.learnedopt.meta_lstm_step.default, *args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:15])
        ctx.scalars = inputs[15:]

    @staticmethod
    def backward(ctx, *grads):
        d = _BackwardOp.apply("learnedopt::meta_lstm_step_backward", _meta_lstm_step_backward,
                              *grads, *ctx.saved_tensors, *ctx.scalars)
        return (*d, None, None, None)


class TurtleStep(torch.autograd.Function):
    """Arguments: theta, grad, m, t, alpha, the number of layers L, then L weights, L biases, beta,
    grad_clamp (the weight lists flattened, since a Function only tracks tensors passed directly)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, grad, m, t, alpha, layers, *rest):
        weights, biases, (beta, grad_clamp) = _layer_lists(rest, layers)
        return tuple(_below_autograd(torch.ops.learnedopt.turtle_step.default, theta, grad, m, t,
                                     alpha, weights, biases, beta, grad_clamp))

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, grad, m, ctx.t, alpha, ctx.layers, *rest = inputs
        weights, biases, (ctx.beta, ctx.grad_clamp) = _layer_lists(rest, ctx.layers)
        ctx.save_for_backward(theta, grad, m, alpha, *weights, *biases)

    @staticmethod
    def backward(ctx, g_theta, g_m):
        theta, grad, m, alpha, *params = ctx.saved_tensors
        d_theta, d_grad, d_m, d_alpha, *d_params = _BackwardOp.apply(
            "learnedopt::turtle_step_backward", _turtle_step_backward, g_theta, g_m, theta, grad, m,
            ctx.t, alpha, ctx.layers, *params, ctx.beta, ctx.grad_clamp)
        # None for t, the layer count, beta and grad_clamp.
        return (d_theta, d_grad, d_m, None, d_alpha, None, *d_params, None, None)


def _layer_lists(flat, layers: int):
    """(weights, biases, the rest) from L weights, L biases and the rest, as TurtleStep takes them."""
    return list(flat[:layers]), list(flat[layers:2 * layers]), flat[2 * layers:]


# The backward ops with flat tensor results, as _BackwardOp calls them.
def _preprocess_backward(*args):
    return (torch.ops.learnedopt.preprocess_backward.default(*args),)


def _meta_lstm_step_backward(*args):
    return torch.ops.learnedopt.meta_lstm_step_backward.default(*args)


def _turtle_step_backward(g_theta, g_m, theta, grad, m, t, alpha, layers, *rest):
    weights, biases, (beta, grad_clamp) = _layer_lists(rest, layers)
    d_theta, d_grad, d_m, d_alpha, d_weights, d_biases = torch.ops.learnedopt.turtle_step_backward.default(
        g_theta, g_m, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp)
    return (d_theta, d_grad, d_m, d_alpha, *d_weights, *d_biases)
