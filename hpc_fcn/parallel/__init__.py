"""Decomposition of one model over many ranks: process grid, communication, autograd primitives, FFT, model.

Layering (each module imports only those above it): split -> host -> comm -> torch_comm -> layout -> grid ->
primitives -> sharding -> fft, layers -> model. See docs/parallel.md.
"""
from .comm import Communicator, MPICommunicator, make_communicator
from .host import HostComm
from .torch_comm import TorchCommunicator
from .fft import DistributedFFT2
from .grid import ProcessGrid, check_layout, check_model_layout
from .primitives import all_reduce, copy_to, gather, gather_to, reduce_from, reduce_scatter_from, scatter, transpose
from .sharding import ShardSpec
from .split import blocks, shard_range, split_offsets, split_sizes

__all__ = ["Communicator", "DistributedFFT2", "HostComm", "MPICommunicator", "ProcessGrid", "ShardSpec", "TorchCommunicator",
           "all_reduce", "blocks", "check_layout", "check_model_layout", "copy_to", "gather", "gather_to",
           "make_communicator", "reduce_from", "reduce_scatter_from", "scatter", "shard_range",
           "split_offsets", "split_sizes", "transpose"]
