"""Training on 4 ranks: one optimizer step and resumed runs match the serial run in any layout."""
from __future__ import annotations

import sys
from contextlib import contextmanager
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


@pytest.fixture(scope="module")
def shared():
    return shared_tempdir("hpc_fcn_train_", lambda p: tiny_data(p / "data"))


@pytest.fixture(scope="module")
def serial_run(shared):
    """The reference: the whole run on one rank (every rank computes it alone, in its own folder)."""
    out = shared / f"serial_{MPI.COMM_WORLD.rank}"
    first = one_step(tiny_config(shared / "data", out, ["validation.enabled=true"]), MPI.COMM_SELF)
    result = first.pop("trainer").run()
    return {"first": first, "losses": [h["loss"] for h in result["history"]],
            "grad_norms": [h["grad_norm"] for h in result["history"]],
            "validation": result["validation"]}


# Losses of later steps: every step's weights differ within the bound of assert_step_matches, which moves a
# float32 loss by ~1e-7 relative (8e-8 to 9e-8 seen over default/avx2/avx512 kernels); 1e-5 keeps 100x.
LOSS_RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


# A layout reorders every reduction (FFTs, matmuls, all-reduces), so its rounding errors differ from one
# rank's; they scale with the magnitudes flowing through the backward pass, whose scale is the global
# gradient norm, not a parameter's own gradient (a bias's gradient can be a sum that cancels to 1e-4 of its
# terms, e.g. AFNO's filter biases behind ReLU and softshrink). Each parameter's gradient error is bounded
# by GRAD_TOL[dtype] x the global norm: float32 ~ 2^-24 x sqrt(n) per sum, compounded through the depth,
# ~1e-7 seen over default/avx2/avx512 kernels; float64, where no branch of ReLU, softshrink or |x - y| flips,
# pins each parameter's gradient of every layout to one rank's exactly (2^-53 x the same growth).
GRAD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_trainer(cfg, comm, dtype=torch.float32):
    """The app's trainer with every step clipped; in ``dtype`` (weights from the default dtype, data cast)."""
    cfg.optim.grad_clip = CLIP
    with default_dtype(dtype):
        trainer = _build(cfg, comm)
    if dtype != torch.float32:
        read = trainer.reader.sequences
        trainer.reader.sequences = lambda *a, **k: read(*a, **k).to(dtype)
    return trainer


def one_step(cfg, comm, dtype=torch.float32) -> dict:
    """One optimizer step: the full weights before and after, the clipped gradients it used, each parameter's
    learning rate and Adam eps, its loss and gradient norm (collective over ``comm``)."""
    trainer = build_trainer(cfg, comm, dtype)
    before = {k: v.clone() for k, v in trainer.shards.full_state_dict().items()}
    with default_dtype(dtype):
        trainer.run(max_steps=1)
    named = [(n, p) for n, p in trainer.shards.named_parameters() if p.grad is not None]
    hyper = {id(p): (g["lr"], g["eps"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    return {"before": before, "after": trainer.shards.full_state_dict(), "trainer": trainer,
            "grads": trainer.shards.gather({n: p.grad for n, p in named}),
            "hyper": {n: hyper[id(p)] for n, p in named},
            "loss": trainer.history[0]["loss"], "grad_norm": trainer.history[0]["grad_norm"]}


def assert_step_matches(layout: str, got: dict, want: dict) -> None:
    """One AdamW step of ``layout`` equals one rank's, compared like with like: the gradients the step used
    (GRAD_TOL x the global norm), then each weight's update relative to its learning rate. Adam's first
    update is lr * g / (|g| + eps): its slope in g is at most 1 / eps, so a gradient element that differs by
    dg may move the update by lr * min(2, |dg| / eps), plus rounding of the update and of the weight (ulps)."""
    dtype = next(iter(want["grads"].values())).dtype
    ulp = torch.finfo(dtype).eps / 2
    scale = float(torch.stack([g.double().norm() for g in want["grads"].values()]).norm())
    for k, g in want["grads"].items():
        err = float((got["grads"][k] - g).norm())
        assert err <= GRAD_TOL[dtype] * scale, \
            f"{layout}: gradient of {k} differs by {err:.2e} (global norm {scale:.2e}, own {float(g.norm()):.2e})"
    for k, w in want["after"].items():
        if k not in want["grads"]:
            assert torch.equal(got["after"][k], w), f"{layout}: {k} has no gradient but changed"
            continue
        lr, eps = want["hyper"][k]
        dg = (got["grads"][k] - want["grads"][k]).abs()
        bound = lr * torch.clamp(dg / eps, max=2.0) + lr * 8 * ulp \
            + 4 * ulp * torch.maximum(w.abs(), want["before"][k].abs())
        excess = float(((got["after"][k] - w).abs() - bound).max())
        assert excess <= 0, f"{layout}: update of {k} exceeds its bound from the gradient by {excess:.2e}"


@pytest.fixture(scope="module")
def serial_float64(shared):
    """One rank's first step in float64: the sharp reference for the layouts' arithmetic."""
    out = shared / f"serial64_{MPI.COMM_WORLD.rank}"
    step = one_step(tiny_config(shared / "data", out), MPI.COMM_SELF, torch.float64)
    step.pop("trainer")
    return step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_step_matches_serial(shared, serial_run, serial_float64, layout, dtype):
    comm = MPI.COMM_WORLD
    out = shared / f"step_{layout}_{str(dtype)[6:]}"
    got = one_step(tiny_config(shared / "data", out, LAYOUTS[layout]), comm, dtype)
    want = serial_run["first"] if dtype == torch.float32 else serial_float64
    assert set(got["after"]) == set(want["after"])
    assert_step_matches(layout, got, want)
    assert got["grad_norm"] > 2 * CLIP  # the step was clipped
    # a loss summed from ~1e4 float32 terms (float32 weights and data even in float64) in another order
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=GRAD_TOL[dtype])  # a norm of the gradients


def test_resume_on_one_rank_after_four_ranks(shared, serial_run):
    """Train 5 steps on h=2 x matmul=2, then resume on a single rank: the remaining losses are the serial ones."""
    comm = MPI.COMM_WORLD
    out = shared / "mp_then_serial"
    mp = build_trainer(tiny_config(shared / "data", out, LAYOUTS["h2_matmul2"]), comm)
    mp.run(max_steps=5)
    mp.save()
    np.testing.assert_allclose([h["loss"] for h in mp.history], serial_run["losses"][:5], rtol=LOSS_RTOL)
    if comm.rank == 0:
        one = build_trainer(tiny_config(shared / "data", out, ["resume=true", "validation.enabled=true"]),
                            MPI.COMM_SELF)
        assert one.iters == 5
        result = one.run()
        np.testing.assert_allclose([h["loss"] for h in result["history"]][5:], serial_run["losses"][5:],
                                   rtol=LOSS_RTOL)
        np.testing.assert_allclose(result["validation"][-1]["loss"], serial_run["validation"][-1]["loss"],
                                   rtol=LOSS_RTOL)
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
                                   rtol=LOSS_RTOL, err_msg=layout)


def test_validation_scores_do_not_depend_on_the_layout(shared, serial_run):
    comm = MPI.COMM_WORLD
    trainer = build_trainer(tiny_config(shared / "data", shared / "val_mp",
                                        LAYOUTS["h2_matmul2"] + ["validation.enabled=true"]), comm)
    serial = build_trainer(tiny_config(shared / "data", shared / f"val_serial_{comm.rank}",
                                       ["validation.enabled=true"]), MPI.COMM_SELF)
    a, b = trainer.validate("x"), serial.validate("x")
    for lead in a["rmse"]:
        for var in a["rmse"][lead]:
            # same weights, float32 forward in the layout's order (~1e-6), scores summed in float64
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
    """One CRPS step of the stochastic model on one rank, in float32 and float64: all 5 members, the whole grid."""
    steps = {}
    for dtype in (torch.float32, torch.float64):
        out = shared / f"crps_serial_{str(dtype)[6:]}_{MPI.COMM_WORLD.rank}"
        steps[dtype] = one_step(tiny_config(shared / "data", out, CRPS), MPI.COMM_SELF, dtype)
        steps[dtype].pop("trainer")
    return steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", list(CRPS_LAYOUTS))
def test_crps_step_of_the_stochastic_model_matches_serial(shared, crps_serial, layout, dtype):
    """Members over the ensemble axis (cross-member term: all-gather, adjoint reduce-scatter) with h / matmul
    model parallelism, the whole network trained with the control anchor (on the last ensemble rank) and a
    faster noise projection: the loss, the clipped global gradient norm and the updated weights equal one
    rank's."""
    world = MPI.COMM_WORLD
    n, overrides = CRPS_LAYOUTS[layout]
    comm = world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
    if comm != MPI.COMM_NULL:
        got = one_step(tiny_config(shared / "data", shared / f"crps_{layout}_{str(dtype)[6:]}", CRPS + overrides),
                       comm, dtype)
        comm.Free()
        want = crps_serial[dtype]
        moved = _rel(want["after"]["noise_proj.weight"], want["before"]["noise_proj.weight"])
        assert moved > 1e-4  # the step trained the noise projection
        assert_step_matches(layout, got, want)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)  # as in test_one_step_matches_serial
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=GRAD_TOL[dtype])
    world.Barrier()
