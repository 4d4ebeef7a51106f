"""torch.vmap rules for the registered ops (torch.library.register_vmap).

The forward ops are coordinate-wise with weights shared by every coordinate, so a batch of
per-coordinate inputs under shared weights is just more coordinates: the batch is folded into n and
the op runs once. meta_lstm_step's loss folds too, since the op takes one loss per task segment: a
batch of 0-d losses becomes a (batch,) loss, a batch of (B,) losses a (batch·B,) one, each segment
keeping its coordinates. When the weights are batched, and for the backward ops, whose weight
gradients are sums over the coordinates that each batch element must get separately, the op runs
once per batch element.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree


def _per_element(op, info, in_dims, args):
    """Runs ``op`` once per batch element and stacks every output along dim 0. ``args`` and
    ``in_dims`` are mirrored pytrees (list arguments hold one dim per tensor)."""
    flat, spec = pytree.tree_flatten(list(args))
    dims = pytree.tree_leaves(list(in_dims), is_leaf=lambda d: d is None)
    results = []
    for b in range(info.batch_size):
        element = [a.select(d, b) if d is not None else a for a, d in zip(flat, dims)]
        results.append(pytree.tree_flatten(op(*pytree.tree_unflatten(element, spec))))
    out_spec = results[0][1]
    stacked = [torch.stack(column) for column in zip(*(leaves for leaves, _ in results))]
    return pytree.tree_unflatten(stacked, out_spec), pytree.tree_unflatten([0] * len(stacked), out_spec)


def _to_front(x, dim, batch):
    """(batch, *x's unbatched shape), contiguous: the kernels read flat arrays."""
    return (x.movedim(dim, 0) if dim is not None else x.expand(batch, *x.shape)).contiguous()


def _fold(op, info, in_dims, args, per_coordinate, coordinate_dims):
    """Runs a forward op once on the batch folded into the coordinates, if only per-coordinate
    inputs (positions ``per_coordinate``, each with ``coordinate_dims`` dimensions per coordinate
    beyond n) are batched; otherwise per element. Every output is per coordinate."""
    shared_dims = [d for k, dims in enumerate(in_dims) if k not in per_coordinate
                   for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if any(d is not None for d in shared_dims):
        return _per_element(op, info, in_dims, args)
    batch = info.batch_size
    args = list(args)
    n = None
    for k, extra in zip(per_coordinate, coordinate_dims):
        x = _to_front(args[k], in_dims[k], batch)
        n = x.shape[1]
        args[k] = x.reshape(batch * n, *x.shape[2:]) if extra else x.reshape(-1)
    out = tuple(o.view(batch, n, *o.shape[1:]) for o in op(*args))
    return out, (0,) * len(out)


def register() -> None:
    lib = torch.ops.learnedopt

    @torch.library.register_vmap("learnedopt::preprocess")
    def _(info, in_dims, x, p, log_eps, strict):
        return lib.preprocess(_to_front(x, in_dims[0], info.batch_size), p, log_eps, strict), 0

    @torch.library.register_vmap("learnedopt::preprocess_backward")
    def _(info, in_dims, grad_out, x, p, log_eps, strict):
        batch = info.batch_size
        return lib.preprocess_backward(_to_front(grad_out, in_dims[0], batch),
                                       _to_front(x, in_dims[1], batch), p, log_eps, strict), 0

    @torch.library.register_vmap("learnedopt::meta_lstm_step")
    def _(info, in_dims, *args):
        # theta, grad (n); h, c (n, H); f_prev, i_prev (n): per coordinate. The loss is per task
        # segment: a shared 0-d loss stays shared; otherwise it is folded with the coordinates (a
        # shared (B,) loss must be repeated, since the folded n holds batch·B segments).
        loss, loss_dim = args[2], in_dims[2]
        if loss_dim is None and loss.dim() == 0:
            return _fold(lib.meta_lstm_step, info, in_dims, args, per_coordinate=(0, 1, 3, 4, 5, 6),
                         coordinate_dims=(0, 0, 1, 1, 0, 0))
        if any(d is not None for d in in_dims[7:15]):
            return _per_element(lib.meta_lstm_step, info, in_dims, args)
        args = list(args)
        args[2] = _to_front(loss, loss_dim, info.batch_size).reshape(-1)
        in_dims = list(in_dims)
        in_dims[2] = None
        return _fold(lib.meta_lstm_step, info, in_dims, args, per_coordinate=(0, 1, 3, 4, 5, 6),
                     coordinate_dims=(0, 0, 1, 1, 0, 0))

    @torch.library.register_vmap("learnedopt::turtle_step")
    def _(info, in_dims, *args):
        # theta, grad, m, alpha (n): the MLP is shared.
        return _fold(lib.turtle_step, info, in_dims, args, per_coordinate=(0, 1, 2, 4),
                     coordinate_dims=(0, 0, 0, 0))

    for name in ("meta_lstm_step_backward", "turtle_step_backward"):
        op = getattr(lib, name)
        torch.library.register_vmap(f"learnedopt::{name}",
                                    lambda info, in_dims, *args, op=op: _per_element(op, info, in_dims, args))
