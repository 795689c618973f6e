"""perturbation.method analysis_ensemble: scaled member-minus-mean perturbations of real ERA5 EDA analyses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from era5_sample import CHANNELS, TIMES, convert_sample, ecc_fields

from hpc_fcn.config import ConfigError, from_dict
from hpc_fcn.data.era5 import FCNDataset
from hpc_fcn.ensemble.analysis_ensemble import AnalysisEnsemblePerturber, analysis_member
from hpc_fcn.ensemble.config import EnsembleConfig, PerturbationConfig
from hpc_fcn.ensemble.plan import as_hours


@pytest.fixture(scope="module")
def eda(tmp_path_factory):
    return convert_sample(tmp_path_factory.mktemp("eda") / "era5")


def config(root, overrides=()) -> EnsembleConfig:
    base = {"model": {"img_size": [60, 120], "patch_size": 4, "embed_dim": 16, "depth": 1, "num_blocks": 4},
            "data": {"root": str(root)},
            "initial_conditions": {"split": "test", "times": ["2017-01-01T12"]},
            "ensemble": {"members": 21, "control": True},
            "perturbation": {"method": "analysis_ensemble", "analysis_scale": 0.5}}
    return from_dict(EnsembleConfig, base, list(overrides))


def test_keying_of_members_to_analyses():
    assert analysis_member(0, True, 10) is None
    assert [analysis_member(k, True, 10) for k in (1, 10, 11, 20)] == [(0, 1.0), (9, 1.0), (0, -1.0), (9, -1.0)]
    assert [analysis_member(k, False, 10) for k in (0, 9, 10, 19)] == [(0, 1.0), (9, 1.0), (0, -1.0), (9, -1.0)]
    with pytest.raises(ConfigError, match="member 21 needs perturbation 21 but 10 analysis members give 20"):
        analysis_member(21, True, 10)


def test_member_minus_mean_of_the_real_analyses(eda):
    cfg = config(eda)
    ref = ecc_fields()
    t = TIMES[1]
    eda_ = np.stack([np.stack([ref[(c, t, m)][:60] for c in CHANNELS]) for m in range(10)])  # (10, 4, 60, 120)
    eda_ = eda_.astype(np.float32).astype(np.float64)  # the stored values
    with FCNDataset(eda, "test") as ds:
        stds = ds.stds.astype(np.float64)[:, None, None]
        full = AnalysisEnsemblePerturber.for_run(cfg, eda, ds, slice(0, 60), slice(0, 120))
        x0 = torch.from_numpy(ds.read(1, normalise=True))
        members = full.perturb(x0, as_hours(t), range(21)).numpy()
        window = AnalysisEnsemblePerturber.for_run(cfg, eda, ds, slice(13, 41), slice(30, 97))
        part = window.perturb(x0[:, 13:41, 30:97], as_hours(t), range(21)).numpy()
    d = 0.5 * (eda_ - eda_.mean(axis=0)) / stds
    # float64: 10 deviations from their mean sum to ~10 * eps64 * |x| / std ~ 1e-14 (was 1e-9)
    np.testing.assert_allclose(d.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(members[0], x0.numpy())  # the control is the analysis
    for k in range(1, 21):
        sign = 1.0 if k <= 10 else -1.0
        # fp32: x0 + d rounds by half an ulp of |x0 + d| (< 1e-6 for normalised values < 32), d itself by 2^-24 |d|
        np.testing.assert_allclose(members[k] - x0.numpy(), sign * d[(k - 1) % 10], atol=2e-6,
                                   err_msg=f"member {k}")
    np.testing.assert_array_equal(part, members[:, :, 13:41, 30:97])  # a rank's window: the same members
    spread = (members[1:11] - members[1:11].mean(axis=0)).std(axis=0).mean(axis=(1, 2))
    # analysis uncertainty: small against the global variability, but not zero (an expected range, not round-off)
    assert np.all((spread > 1e-3) & (spread < 0.05)), spread


@pytest.mark.parametrize("case, message", [
    ("too_many", "config key 'ensemble.members': member 21 needs perturbation 21"),
    ("no_members", "needs an ensemble of analyses"),
    ("time", "no analysis ensemble at 2017-01-03T00"),
])
def test_clear_errors(eda, tmp_path, case, message):
    from hpc_fcn.data.convert import main
    cfg = config(eda, ["ensemble.members=22"] if case == "too_many" else [])
    root = eda
    if case == "no_members":  # one member: a single analysis
        from era5_sample import SAMPLE, sample_args
        root = tmp_path / "single"
        import eccodes as ec
        one = tmp_path / "member0.grib"
        with open(SAMPLE, "rb") as f, open(one, "wb") as out:
            while (h := ec.codes_grib_new_from_file(f)) is not None:
                if ec.codes_get(h, "number") == 0:
                    out.write(ec.codes_get_message(h))
                ec.codes_release(h)
        assert main(sample_args(one, root, CHANNELS, "--stats-from", "test")) == 0
        cfg = config(root)
    with FCNDataset(root, "test") as ds:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            p = AnalysisEnsemblePerturber.for_run(cfg, root, ds, slice(0, 60), slice(0, 120))
            p.perturb(torch.zeros(4, 60, 120), as_hours(np.datetime64("2017-01-03T00", "h")), [1])


def test_scale_is_validated():
    with pytest.raises(ConfigError, match="perturbation.analysis_scale"):
        PerturbationConfig(method="analysis_ensemble", analysis_scale=-1.0).validate("perturbation")
