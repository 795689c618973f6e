"""Device-to-host copies that do not stall the step loop: reused (pinned, on CUDA) buffers, copies on a side stream.

:meth:`HostBuffers.copy` starts a copy and returns at once; whoever reads it (the writer thread, or the main
thread at the next sync point) calls :meth:`HostCopy.wait`, and :meth:`HostCopy.release` gives the buffer back
for a later copy. On the CPU it is a plain copy into a reused buffer (the caller may change the source in place).
"""
from __future__ import annotations

import threading

import numpy as np
import torch


class HostCopy:
    """A host copy in progress: ``wait()`` returns the host tensor once the copy has ended.

    Each reader that keeps it beyond the caller's use calls ``share()`` first and ``release()`` when done; the
    buffer goes back to the pool at the last ``release()``.
    """

    def __init__(self, pool: "HostBuffers", tensor: torch.Tensor, event=None):
        self._pool, self.tensor, self._event = pool, tensor, event
        self._users = 1

    def wait(self) -> torch.Tensor:
        ev = self._event
        if ev is not None:
            ev.synchronize()
        return self.tensor

    def numpy(self) -> np.ndarray:
        return self.wait().numpy()

    def share(self) -> "HostCopy":
        with self._pool._lock:
            self._users += 1
        return self

    def release(self) -> None:
        """One reader is done with the data (from any thread); after the last one the buffer may be reused."""
        with self._pool._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool._give_back(self.wait())


class HostBuffers:
    """Host buffers of ``device``'s copies, reused by shape and dtype; pinned, with their own copy stream, on CUDA."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.allocated = 0  # buffers created (a test and the bench read it)

    def copy(self, src: torch.Tensor) -> HostCopy:
        """Start copying ``src`` to a host buffer; on CUDA the copy overlaps the kernels queued after it."""
        src = src.detach()
        buf = self._take(tuple(src.shape), src.dtype)
        if not self.cuda or src.device.type != "cuda":
            buf.copy_(src)
            return HostCopy(self, buf)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(src.device))  # src is complete before the copy starts
        with torch.cuda.stream(stream):
            buf.copy_(src, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
        src.record_stream(stream)  # the allocator keeps src's memory until the copy has ended
        return HostCopy(self, buf, ev)

    def _take(self, shape: tuple, dtype) -> torch.Tensor:
        with self._lock:
            free = self._free.get((shape, dtype))
            if free:
                return free.pop()
        self.allocated += 1
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def _give_back(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
