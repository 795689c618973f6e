"""Energy per member-step predicted from the time model and the hardware's board power per state.

Each region's predicted time is spent in one power state: ``compute`` when its FLOPs take longer than
its bytes, else ``memory``; kernel-launch overheads and collectives in ``comm``. Energy per pass is the
sum of time x watts over regions; every rank's GPU draws it for each of its passes, so per member-step
``ranks * passes * joules_per_pass / members``. The power figures are in ``perfmodel/hardware/*.yaml``
(``power_watts``); measured joules come from NVML (``hpc_fcn.accel.power``) in ``timings.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .hardware import Hardware, load_hardware
from .predict import Prediction

STATES = ("compute", "memory", "comm")  # the yaml may also give "idle" (for reference, not predicted)


@dataclass
class EnergyPrediction:
    joules_per_pass: float
    joules_per_member_step: float
    mean_watts: float
    seconds: dict[str, float]  # per power state, one pass

    def as_dict(self) -> dict:
        return {"joules_per_pass": self.joules_per_pass, "joules_per_member_step": self.joules_per_member_step,
                "mean_watts": self.mean_watts, "seconds": dict(self.seconds)}


def has_power(hw: Hardware) -> bool:
    return all(hw.power_watts.get(s) for s in STATES)


def predict_energy(pred: Prediction, hardware) -> EnergyPrediction | None:
    """Predicted energy of ``pred`` on ``hardware``; None when the hardware file has no power figures."""
    hw = load_hardware(hardware)
    if not has_power(hw):
        return None
    secs = dict.fromkeys(STATES, 0.0)
    for r in pred.regions.values():
        secs["compute" if r.flop_s >= r.mem_s else "memory"] += r.compute_s
        secs["comm"] += r.overhead_s + r.comm_s
    per_pass = sum(secs[s] * hw.power_watts[s] for s in STATES)
    ranks = 1
    for v in pred.layout.values():
        ranks *= int(v)
    step = sum(secs.values())
    return EnergyPrediction(per_pass, ranks * pred.passes * per_pass / max(pred.members, 1),
                            per_pass / step if step else 0.0, secs)
