"""Region timing of a model without editing it: forward pre/post hooks on its named submodules.

``handle = instrument(model, tracer)`` times ``patch_embed``, ``blocks.N.norm1``, ``blocks.N.filter``,
``blocks.N.norm2``, ``blocks.N.mlp`` and ``head`` (serial ``AFNONet`` and ``DistributedAFNONet`` share
these names) under those names; ``handle.remove()`` takes the hooks off. A disabled tracer gets no
hooks at all. On CPU the hooks read the host clock; on CUDA the tracer records CUDA events instead. Hooks
do not run when a CUDA graph replays (only the graph's enclosing region is timed then), and the tracer
skips them while the graph is captured.
"""
from __future__ import annotations

import re

import torch.nn as nn

from .tracing import Tracer

REGION_PATTERN = re.compile(r"^(patch_embed|head|blocks\.\d+\.(norm1|filter|norm2|mlp))$")


class InstrumentHandle:
    """The hooks ``instrument`` attached; ``remove()`` detaches them (also as a context manager)."""

    def __init__(self, handles: list, names: list[str]):
        self._handles = handles
        self.names = names

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "InstrumentHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def region_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules that get a region, in forward order."""
    return [(n, m) for n, m in model.named_modules() if REGION_PATTERN.match(n)]


def instrument(model: nn.Module, tracer: Tracer, prefix: str = "") -> InstrumentHandle:
    """Attach a timing region to each named submodule of ``model``; no hooks when the tracer is off."""
    if not tracer.enabled:
        return InstrumentHandle([], [])
    handles, names = [], []
    for name, mod in region_modules(model):
        region = prefix + name
        open_ = {}

        def pre(module, args, region=region, open_=open_):
            open_.setdefault(id(module), []).append(tracer.begin(region, "compute", args))

        def post(module, args, output, region=region, open_=open_):
            stack = open_.get(id(module))
            if stack:
                tracer.end(stack.pop(), output)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
        names.append(region)
    return InstrumentHandle(handles, names)
