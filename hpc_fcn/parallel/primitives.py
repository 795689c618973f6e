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


class _CopyTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, tag):
        ctx.axis, ctx.tag = axis, tag
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.axis.all_reduce(g, ctx.tag), None, None


class _ReduceFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, tag):
        return axis.all_reduce(x, tag)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, tag):
        ctx.axis, ctx.tag = axis, tag
        return axis.all_reduce(x, tag)

    @staticmethod
    def backward(ctx, g):
        return ctx.axis.all_reduce(g, ctx.tag), None, None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, dim, sizes, tag):
        ctx.axis, ctx.dim, ctx.sizes, ctx.tag = axis, dim, sizes, tag
        return _own(x, axis, dim, sizes)

    @staticmethod
    def backward(ctx, g):
        return ctx.axis.all_gather(g, ctx.dim, ctx.sizes, ctx.tag), None, None, None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, dim, sizes, tag):
        ctx.axis, ctx.dim, ctx.sizes = axis, dim, sizes
        return axis.all_gather(x, dim, sizes, tag)

    @staticmethod
    def backward(ctx, g):
        return _own(g, ctx.axis, ctx.dim, ctx.sizes), None, None, None, None


class _GatherTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, dim, sizes, tag):
        ctx.axis, ctx.dim, ctx.sizes, ctx.tag = axis, dim, sizes, tag
        return axis.all_gather(x, dim, sizes, tag)

    @staticmethod
    def backward(ctx, g):
        return ctx.axis.reduce_scatter(g, ctx.dim, ctx.sizes, ctx.tag), None, None, None, None


class _ReduceScatterFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, dim, sizes, tag):
        ctx.axis, ctx.dim, ctx.sizes, ctx.tag = axis, dim, sizes, tag
        return axis.reduce_scatter(x, dim, sizes, tag)

    @staticmethod
    def backward(ctx, g):
        return ctx.axis.all_gather(g, ctx.dim, ctx.sizes, ctx.tag), None, None, None, None


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
    return x if axis.size == 1 else _CopyTo.apply(x, axis, tag)


def reduce_from(x: torch.Tensor, axis: Communicator, tag: str = "reduce_from") -> torch.Tensor:
    """All-reduce of partial sums into a replicated tensor; backward is the identity."""
    return x if axis.size == 1 else _ReduceFrom.apply(x, axis, tag)


def all_reduce(x: torch.Tensor, axis: Communicator, tag: str = "all_reduce") -> torch.Tensor:
    """All-reduce whose consumers are rank-partial: it is self-adjoint, so backward all-reduces too."""
    return x if axis.size == 1 else _AllReduce.apply(x, axis, tag)


def scatter(x: torch.Tensor, axis: Communicator, dim: int, sizes: Sequence[int] | None = None,
            tag: str = "scatter") -> torch.Tensor:
    """Keep this rank's shard of a replicated tensor (balanced split unless ``sizes``); backward all-gathers."""
    if axis.size == 1:
        return x
    dim = dim % x.dim()
    s = _sizes(x.shape[dim] if sizes is None else sizes, axis, f"scatter of dimension {dim}")
    return _Scatter.apply(x, axis, dim, s, tag)


def gather(x: torch.Tensor, axis: Communicator, dim: int, n: int | Sequence[int],
           tag: str = "gather") -> torch.Tensor:
    """All-gather shards of a dimension of global length ``n`` (or explicit sizes) into a replicated tensor."""
    if axis.size == 1:
        return x
    dim = dim % x.dim()
    return _Gather.apply(x, axis, dim, _sizes(n, axis, f"gather of dimension {dim}"), tag)


def gather_to(x: torch.Tensor, axis: Communicator, dim: int, n: int | Sequence[int],
              tag: str = "gather_to") -> torch.Tensor:
    """All-gather for rank-partial consumers (e.g. a column-parallel linear); backward reduce-scatters."""
    if axis.size == 1:
        return x
    dim = dim % x.dim()
    return _GatherTo.apply(x, axis, dim, _sizes(n, axis, f"gather of dimension {dim}"), tag)


def reduce_scatter_from(x: torch.Tensor, axis: Communicator, dim: int, sizes: Sequence[int] | None = None,
                        tag: str = "reduce_scatter_from") -> torch.Tensor:
    """Sum partial tensors and keep this rank's shard of ``dim``; backward all-gathers."""
    if axis.size == 1:
        return x
    dim = dim % x.dim()
    s = _sizes(x.shape[dim] if sizes is None else sizes, axis, f"reduce-scatter of dimension {dim}")
    return _ReduceScatterFrom.apply(x, axis, dim, s, tag)


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

