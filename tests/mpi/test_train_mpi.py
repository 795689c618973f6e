"""Training on 4 ranks: one optimizer step and resumed runs match the serial run in any layout."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_train import tiny_config, tiny_data  # noqa: E402

from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402
from hpc_fcn.train.app import build_trainer as _build  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="layouts are laid out for 4 ranks")

LAYOUTS = {
    "h2_matmul2": ["parallel.h=2", "parallel.matmul=2"],
    "ens2_h2": ["parallel.ensemble=2", "parallel.h=2"],
    "h2_w2": ["parallel.h=2", "parallel.w=2"],
    "data4": [],
}


CLIP = 0.05  # small enough that every step is clipped: the global norm must agree across layouts


def build_trainer(cfg, comm):
    cfg.optim.grad_clip = CLIP
    return _build(cfg, comm)


@pytest.fixture(scope="module")
def shared():
    return shared_tempdir("hpc_fcn_train_", lambda p: tiny_data(p / "data"))


@pytest.fixture(scope="module")
def serial_run(shared):
    """The reference: the whole run on one rank (every rank computes it alone, in its own folder)."""
    out = shared / f"serial_{MPI.COMM_WORLD.rank}"
    trainer = build_trainer(tiny_config(shared / "data", out, ["validation.enabled=true"]), MPI.COMM_SELF)
    trainer.run(max_steps=1)
    first = {k: v.clone() for k, v in trainer.shards.full_state_dict().items()}
    result = trainer.run()
    return {"after_one_step": first, "losses": [h["loss"] for h in result["history"]],
            "grad_norms": [h["grad_norm"] for h in result["history"]],
            "validation": result["validation"]}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_step_matches_serial(shared, serial_run, layout):
    comm = MPI.COMM_WORLD
    out = shared / f"step_{layout}"
    trainer = build_trainer(tiny_config(shared / "data", out, LAYOUTS[layout]), comm)
    trainer.run(max_steps=1)
    got = trainer.shards.full_state_dict()
    want = serial_run["after_one_step"]
    assert set(got) == set(want)
    worst = max((_rel(got[k], want[k]), k) for k in want)
    assert worst[0] < 1e-5, f"{layout}: {worst[1]} differs by {worst[0]:.2e} (relative)"
    assert trainer.history[0]["loss"] == pytest.approx(serial_run["losses"][0], rel=1e-5)
    assert trainer.history[0]["grad_norm"] > 2 * CLIP  # the step was clipped
    assert trainer.history[0]["grad_norm"] == pytest.approx(serial_run["grad_norms"][0], rel=1e-5)


def test_resume_on_one_rank_after_four_ranks(shared, serial_run):
    """Train 5 steps on h=2 x matmul=2, then resume on a single rank: the remaining losses are the serial ones."""
    comm = MPI.COMM_WORLD
    out = shared / "mp_then_serial"
    mp = build_trainer(tiny_config(shared / "data", out, LAYOUTS["h2_matmul2"]), comm)
    mp.run(max_steps=5)
    mp.save()
    np.testing.assert_allclose([h["loss"] for h in mp.history], serial_run["losses"][:5], rtol=1e-5)
    if comm.rank == 0:
        one = build_trainer(tiny_config(shared / "data", out, ["resume=true", "validation.enabled=true"]),
                            MPI.COMM_SELF)
        assert one.iters == 5
        result = one.run()
        np.testing.assert_allclose([h["loss"] for h in result["history"]][5:], serial_run["losses"][5:], rtol=1e-5)
        np.testing.assert_allclose(result["validation"][-1]["loss"], serial_run["validation"][-1]["loss"],
                                   rtol=1e-5)
    comm.Barrier()


def test_resume_on_four_ranks_after_one_rank(shared, serial_run):
    """Train 9 steps serially (into the 2-step phase), resume on ensemble=2 x h=2 and on h=2 x matmul=2."""
    comm = MPI.COMM_WORLD
    for layout in ("ens2_h2", "h2_matmul2"):
        out = shared / f"serial_then_{layout}"
        if comm.rank == 0:
            one = build_trainer(tiny_config(shared / "data", out), MPI.COMM_SELF)
            one.run(max_steps=9)
            one.save()
        comm.Barrier()
        mp = build_trainer(tiny_config(shared / "data", out, LAYOUTS[layout] + ["resume=true"]), comm)
        assert mp.iters == 9 and mp.pos.phase == 1
        result = mp.run()
        np.testing.assert_allclose([h["loss"] for h in result["history"]][9:], serial_run["losses"][9:],
                                   rtol=1e-5, err_msg=layout)


def test_validation_scores_do_not_depend_on_the_layout(shared, serial_run):
    comm = MPI.COMM_WORLD
    trainer = build_trainer(tiny_config(shared / "data", shared / "val_mp",
                                        LAYOUTS["h2_matmul2"] + ["validation.enabled=true"]), comm)
    serial = build_trainer(tiny_config(shared / "data", shared / f"val_serial_{comm.rank}",
                                       ["validation.enabled=true"]), MPI.COMM_SELF)
    a, b = trainer.validate("x"), serial.validate("x")
    for lead in a["rmse"]:
        for var in a["rmse"][lead]:
            assert a["rmse"][lead][var] == pytest.approx(b["rmse"][lead][var], rel=1e-5)
            assert a["acc"][lead][var] == pytest.approx(b["acc"][lead][var], rel=1e-5, abs=1e-6)


# ---- the stochastic model trained with the fair CRPS over the ensemble axis -----------------------------
CRPS = ["model.stochastic=true", "model.noise_dim=4", "loss.kind=crps", "loss.members=5",
        "model.noise_blocks=2", "model.noise_length_km=3000", "model.noise_memory_hours=12",
        "loss.control_weight=0.5", "loss.spectral_weight=0.5", "optim.lr_scale={noise_proj: 4.0}",
        "phases={crps: {epochs: 1, rollout_steps: 2, batch_size: 2, lr: 1.0e-3}}"]
CRPS_LAYOUTS = {  # 5 members: 3 + 2 on two ensemble ranks, 2 + 1 + 1 + 1 on four; the control on the last
    "ens2": (2, ["parallel.ensemble=2"]),
    "ens2_h2": (4, ["parallel.ensemble=2", "parallel.h=2"]),
    "ens2_matmul2": (4, ["parallel.ensemble=2", "parallel.matmul=2"]),
    "ens2_w2": (4, ["parallel.ensemble=2", "parallel.w=2"]),  # the spectral term gathers whole rows
    "ens4": (4, ["parallel.ensemble=4"]),
}


@pytest.fixture(scope="module")
def crps_serial(shared):
    """One CRPS step of the stochastic model on one rank: all 5 members, the whole grid."""
    out = shared / f"crps_serial_{MPI.COMM_WORLD.rank}"
    trainer = build_trainer(tiny_config(shared / "data", out, CRPS), MPI.COMM_SELF)
    before = {k: v.clone() for k, v in trainer.shards.full_state_dict().items()}
    trainer.run(max_steps=1)
    return {"before": before, "after": trainer.shards.full_state_dict(), "loss": trainer.history[0]["loss"],
            "grad_norm": trainer.history[0]["grad_norm"]}


@pytest.mark.parametrize("layout", list(CRPS_LAYOUTS))
def test_crps_step_of_the_stochastic_model_matches_serial(shared, crps_serial, layout):
    """Members over the ensemble axis (cross-member term: all-gather, adjoint reduce-scatter) with h / matmul
    model parallelism, the whole network trained with the control anchor (on the last ensemble rank) and a
    faster noise projection: the loss, the clipped global gradient norm and the updated weights equal one
    rank's."""
    world = MPI.COMM_WORLD
    n, overrides = CRPS_LAYOUTS[layout]
    comm = world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
    if comm != MPI.COMM_NULL:
        trainer = build_trainer(tiny_config(shared / "data", shared / f"crps_{layout}", CRPS + overrides), comm)
        trainer.run(max_steps=1)
        got = trainer.shards.full_state_dict()
        comm.Free()
        want = crps_serial["after"]
        moved = _rel(want["noise_proj.weight"], crps_serial["before"]["noise_proj.weight"])
        assert moved > 1e-4  # the step trained the noise projection
        worst = max((_rel(got[k], want[k]), k) for k in want)
        assert worst[0] < 1e-5, f"{layout}: {worst[1]} differs by {worst[0]:.2e} (relative)"
        assert trainer.history[0]["loss"] == pytest.approx(crps_serial["loss"], rel=1e-5)
        assert trainer.history[0]["grad_norm"] == pytest.approx(crps_serial["grad_norm"], rel=1e-5)
    world.Barrier()
