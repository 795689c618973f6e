"""GPU energy of a run through NVML: the board's energy counter read at start and stop, and its power
sampled on a background thread (mean and peak watts; the energy when the counter is not supported).

``PowerSampler(device).start()`` ... ``.stop()`` returns a :class:`EnergyReading`; on the CPU, or where
NVML (``nvidia-ml-py``) or its driver library is missing, it does nothing and the reading's ``joules``
is ``None`` with the reason. :func:`joules_per_member_step` combines the readings of all ranks, each
GPU counted once (ranks sharing a GPU read the same board).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import torch

DEFAULT_INTERVAL_S = 0.1


@dataclass
class EnergyReading:
    """What one rank's GPU drew between start and stop (``joules`` None when it could not be measured)."""
    gpu: str | None = None  # NVML UUID of the board
    joules: float | None = None
    seconds: float = 0.0
    mean_watts: float | None = None
    peak_watts: float | None = None
    samples: int = 0
    source: str = ""  # 'nvml energy counter', 'nvml power samples', or why nothing was measured

    def as_dict(self) -> dict:
        return asdict(self)


def _nvml_handle(device: torch.device):
    """(pynvml module, handle of the board behind ``device``), or raises with the reason."""
    import pynvml  # nvidia-ml-py
    pynvml.nvmlInit()
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:  # the same board whatever CUDA_VISIBLE_DEVICES renumbers
        try:
            return pynvml, pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)


class PowerSampler:
    """Energy and power of the GPU behind ``device`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, device: torch.device | str, interval_s: float = DEFAULT_INTERVAL_S):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._nvml = self._handle = None
        self._reason = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watts: list[tuple[float, float]] = []  # (time, watts)
        self._energy0: float | None = None
        self._t0 = 0.0
        if self.device.type != "cuda":
            self._reason = f"no GPU ({self.device.type} run)"
            return
        try:
            self._nvml, self._handle = _nvml_handle(self.device)
            self.uuid = self._nvml.nvmlDeviceGetUUID(self._handle)
        except ImportError:
            self._reason = "nvidia-ml-py (pynvml) is not installed"
        except Exception as exc:  # noqa: BLE001 - NVML errors: no driver library, no permission, ...
            self._reason = f"NVML unavailable: {exc}"
            self._nvml = self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    @property
    def reason(self) -> str:
        """Why nothing is measured ('' when NVML is there)."""
        return self._reason

    def _energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # noqa: BLE001 - boards older than Volta have no energy counter
            return None

    def _watts_now(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._watts.append((time.perf_counter(), self._watts_now()))
            except Exception:  # noqa: BLE001 - a failed read leaves a gap, not a crash
                pass

    def start(self) -> "PowerSampler":
        self._t0 = time.perf_counter()
        if not self.available:
            return self
        self._watts = [(self._t0, self._watts_now())]
        self._energy0 = self._energy_mj()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="nvml-power", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> EnergyReading:
        """Stop sampling; the energy since :meth:`start` (the counter's difference when the board has one)."""
        seconds = time.perf_counter() - self._t0
        if not self.available:
            return EnergyReading(seconds=seconds, source=self._reason)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the work launched so far is part of the run
            seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._watts.append((time.perf_counter(), self._watts_now()))
        watts = [w for _, w in self._watts]
        energy1 = self._energy_mj()
        if self._energy0 is not None and energy1 is not None:
            joules, source = (energy1 - self._energy0) / 1e3, "nvml energy counter"
        else:  # trapezoids over the samples
            joules = sum(0.5 * (w0 + w1) * (t1 - t0) for (t0, w0), (t1, w1) in zip(self._watts, self._watts[1:]))
            source = "nvml power samples"
        return EnergyReading(gpu=self.uuid, joules=joules, seconds=seconds, mean_watts=joules / max(seconds, 1e-9),
                             peak_watts=max(watts), samples=len(watts), source=source)

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.reading = self.stop()


def joules_per_member_step(readings: list[dict], member_steps: int) -> dict:
    """Energy of all GPUs of the run (each board once) per member-step; ``None`` where nothing was measured."""
    boards: dict[str, float] = {}
    for r in readings:
        if r.get("joules") is not None and r.get("gpu"):
            boards[r["gpu"]] = max(boards.get(r["gpu"], 0.0), r["joules"])
    if not boards:
        reasons = sorted({r.get("source", "") for r in readings if r.get("source")})
        return {"joules": None, "joules_per_member_step": None, "gpus": 0, "note": "; ".join(reasons)}
    total = sum(boards.values())
    return {"joules": total, "joules_per_member_step": total / max(member_steps, 1), "gpus": len(boards),
            "note": "GPU boards only (NVML), whole run including IO and waits"}
