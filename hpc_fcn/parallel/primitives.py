"""Autograd communication primitives; each forward sits next to its adjoint (the backward).

Vocabulary (per communicator axis): *replicated* = the same tensor on every rank; *sharded* = each
rank holds a piece of one dimension (balanced split, or explicit sizes); *partial* = each rank holds
a summand of the true tensor. The pairs:

========================  ==========================  ===========================
primitive                 forward                     backward
========================  ==========================  ===========================
copy_to                   identity                    all-reduce      (replicated -> partial consumers)
reduce_from               all-reduce                  identity        (partial -> replicated)
scatter                   keep own shard              all-gather      (replicated -> sharded)
gather                    all-gather                  keep own shard  (sharded -> replicated)
gather_to                 all-gather                  reduce-scatter  (sharded -> partial consumers)
reduce_scatter_from       reduce-scatter              all-gather      (partial -> sharded)
all_reduce                all-reduce                  all-reduce      (partial -> partial consumers)
transpose                 all-to-all (a local, b      the inverse all-to-all
                          sharded)
========================  ==========================  ===========================

The identities in the backward of ``reduce_from`` and ``gather`` are valid because their outputs
are replicated: every rank computes the same loss from them, so the incoming gradients agree.
On a size-1 axis every primitive is the identity (no autograd node is created).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .comm import Communicator
from .split import split_sizes


def _sizes(n_or_sizes: int | Sequence[int], axis: Communicator, what: str) -> list[int]:
    if isinstance(n_or_sizes, int):
        return split_sizes(n_or_sizes, axis.size, what)
    sizes = [int(s) for s in n_or_sizes]
    if len(sizes) != axis.size or min(sizes) < 1:
        raise ValueError(f"{what}: sizes {sizes} are not {axis.size} non-empty shards")
    return sizes


def _own(x: torch.Tensor, axis: Communicator, dim: int, sizes: list[int]) -> torch.Tensor:
    start = sum(sizes[:axis.rank])
    return x.narrow(dim, start, sizes[axis.rank]).contiguous()


def _identity(x, axis, tag):
    return x.view_as(x)


def _all_reduce(x, axis, tag):
    return axis.all_reduce(x, tag)


def _keep(x, axis, dim, sizes, tag):
    return _own(x, axis, dim, sizes)


def _all_gather(x, axis, dim, sizes, tag):
    return axis.all_gather(x, dim, sizes, tag)


def _reduce_scatter(x, axis, dim, sizes, tag):
    return axis.reduce_scatter(x, dim, sizes, tag)


class _Paired(torch.autograd.Function):
    """Forward ``fwd(x, *args)``, backward its adjoint ``bwd(g, *args)`` (one row of the table above)."""

    @staticmethod
    def forward(ctx, x, fwd, bwd, *args):
        ctx.bwd, ctx.args = bwd, args
        return fwd(x, *args)

    @staticmethod
    def backward(ctx, g):
        return (ctx.bwd(g, *ctx.args), None, None) + (None,) * len(ctx.args)


class _Transpose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, gather_dim, scatter_dim, gather_sizes, scatter_sizes, tag):
        ctx.args = (axis, gather_dim, scatter_dim, gather_sizes, scatter_sizes, tag)
        return axis.all_to_all(x, scatter_dim, gather_dim, scatter_sizes, gather_sizes, tag)

    @staticmethod
    def backward(ctx, g):
        axis, gather_dim, scatter_dim, gather_sizes, scatter_sizes, tag = ctx.args
        # the inverse: scatter the dim we gathered, gather the dim we scattered
        return (axis.all_to_all(g, gather_dim, scatter_dim, gather_sizes, scatter_sizes, tag),
                None, None, None, None, None, None)


def copy_to(x: torch.Tensor, axis: Communicator, tag: str = "copy_to") -> torch.Tensor:
    """Identity; backward all-reduces (use where a replicated tensor feeds rank-partial work)."""
    return x if axis.size == 1 else _Paired.apply(x, _identity, _all_reduce, axis, tag)


def reduce_from(x: torch.Tensor, axis: Communicator, tag: str = "reduce_from") -> torch.Tensor:
    """All-reduce of partial sums into a replicated tensor; backward is the identity."""
    return x if axis.size == 1 else _Paired.apply(x, _all_reduce, _identity, axis, tag)


def all_reduce(x: torch.Tensor, axis: Communicator, tag: str = "all_reduce") -> torch.Tensor:
    """All-reduce whose consumers are rank-partial: it is self-adjoint, so backward all-reduces too."""
    return x if axis.size == 1 else _Paired.apply(x, _all_reduce, _all_reduce, axis, tag)


def _sharded(x, fwd, bwd, axis: Communicator, dim: int, sizes, tag: str, what: str) -> torch.Tensor:
    """Apply a shard-changing pair along ``dim``; ``sizes``: None (balanced split of x's dim), a global
    length (balanced split of it) or each rank's length."""
    if axis.size == 1:
        return x
    dim = dim % x.dim()
    s = _sizes(x.shape[dim] if sizes is None else sizes, axis, f"{what} of dimension {dim}")
    return _Paired.apply(x, fwd, bwd, axis, dim, s, tag)


def scatter(x: torch.Tensor, axis: Communicator, dim: int, sizes: Sequence[int] | None = None,
            tag: str = "scatter") -> torch.Tensor:
    """Keep this rank's shard of a replicated tensor (balanced split unless ``sizes``); backward all-gathers."""
    return _sharded(x, _keep, _all_gather, axis, dim, sizes, tag, "scatter")


def gather(x: torch.Tensor, axis: Communicator, dim: int, n: int | Sequence[int],
           tag: str = "gather") -> torch.Tensor:
    """All-gather shards of a dimension of global length ``n`` (or explicit sizes) into a replicated tensor."""
    return _sharded(x, _all_gather, _keep, axis, dim, n, tag, "gather")


def gather_to(x: torch.Tensor, axis: Communicator, dim: int, n: int | Sequence[int],
              tag: str = "gather_to") -> torch.Tensor:
    """All-gather for rank-partial consumers (e.g. a column-parallel linear); backward reduce-scatters."""
    return _sharded(x, _all_gather, _reduce_scatter, axis, dim, n, tag, "gather")


def reduce_scatter_from(x: torch.Tensor, axis: Communicator, dim: int, sizes: Sequence[int] | None = None,
                        tag: str = "reduce_scatter_from") -> torch.Tensor:
    """Sum partial tensors and keep this rank's shard of ``dim``; backward all-gathers."""
    return _sharded(x, _reduce_scatter, _all_gather, axis, dim, sizes, tag, "reduce-scatter")


def transpose(x: torch.Tensor, axis: Communicator, gather_dim: int, scatter_dim: int,
              gather_sizes: int | Sequence[int], scatter_sizes: int | Sequence[int] | None = None,
              tag: str = "transpose") -> torch.Tensor:
    """All-to-all that makes ``gather_dim`` whole and shards ``scatter_dim``; backward is the inverse.

    ``gather_sizes``: the global length of ``gather_dim`` (balanced split) or each rank's length.
    ``scatter_sizes``: how to split this rank's ``scatter_dim`` (balanced split when None).
    """
    if axis.size == 1:
        return x
    gd, sd = gather_dim % x.dim(), scatter_dim % x.dim()
    g = _sizes(gather_sizes, axis, f"transpose of dimension {gd}")
    s = _sizes(x.shape[sd] if scatter_sizes is None else scatter_sizes, axis, f"transpose of dimension {sd}")
    return _Transpose.apply(x, axis, gd, sd, g, s, tag)

