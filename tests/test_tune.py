"""The perturbation tuner on the tiny ensemble: the search, the fragment the app includes, one-line errors."""
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ensemble_setup import CLI_ENV, ROOT, error_lines, tiny_dataset, tiny_tune_config, tiny_tune_data
from mpi4py import MPI

from hpc_fcn.config import ConfigError, load_config
from hpc_fcn.ensemble.config import EnsembleConfig
from hpc_fcn.ensemble.search import golden_section
from hpc_fcn.ensemble.tune import Objective, calibration_penalty, tune


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tune") / "data")


def test_golden_section_finds_the_minimum_and_never_loses_the_start():
    calls = []
    x, v = golden_section(lambda x: calls.append(x) or (x - 0.3) ** 2, -2.0, 2.0, 20, start=1.5)
    assert abs(x - 0.3) < 1e-3 and len(calls) == 23  # the bracket after 20 steps: 4 * 0.618^20 = 2.6e-4 wide
    x, v = golden_section(lambda x: abs(x - 1.9), -2.0, 2.0, 1, start=1.9)  # the start beats the 3 probes
    assert (x, v) == (1.9, 0.0)
    x, v = golden_section(lambda x: math.nan if x > 0 else -x, -1.0, 1.0, 4)
    assert v < 0.3 and x <= 0


def test_tune_lowers_the_objective_and_writes_a_fragment_the_app_includes(data, tmp_path):
    frag = tmp_path / "tuned" / "gaussian.yaml"
    cfg = tiny_tune_config(data, frag)
    result = tune(cfg, MPI.COMM_SELF, command="python -m hpc_fcn.ensemble.tune tiny.yaml")
    assert result.objective_start == 1.0 and result.objective_best < 0.999
    assert result.evaluations <= 1 + 4 + 3 * 3  # start, 4 scale probes, 3 per channel (the start is cached)
    assert np.all(result.crps_best <= result.crps_start * 1.05)
    text = frag.read_text()
    assert "# command: python -m hpc_fcn.ensemble.tune tiny.yaml" in text
    assert f"1.0000  ->  tuned: {result.objective_best:.4f}" in text
    amps = yaml.safe_load(text)["perturbation"]["channel_amplitude"]
    assert amps == result.best.channel_amplitude and set(amps) == {"u", "v", "z"}
    app = tmp_path / "ens.yaml"
    app.write_text("include: [tuned/gaussian.yaml]\nensemble: {members: 3}\n")
    cfg = load_config(EnsembleConfig, app)
    assert cfg.perturbation == result.best and cfg.ensemble.members == 3
    # the objective of the tuned values, measured again from the fragment, is the one reported
    again = Objective(tiny_tune_config(data, frag, [f"perturbation.channel_amplitude={amps}"]), MPI.COMM_SELF)
    start = Objective(tiny_tune_config(data, frag), MPI.COMM_SELF)
    ratio = again.crps(cfg.perturbation) / start.crps(start.run.cfg.perturbation)
    # the same fp32 forecasts rerun with the same values (the fragment's floats round-trip): bitwise on one
    # machine; 1e-6 (~8 fp32 ulp) if a kernel blocks a product differently
    assert np.mean(ratio) == pytest.approx(result.objective_best, rel=1e-6)
    again.close()
    start.close()


def test_calibration_penalty_is_the_squared_log_distance_outside_the_band():
    band = (0.8, 1.25)
    assert calibration_penalty(np.array([[0.8, 1.0], [1.25, 0.9]]), band) == 0.0
    ssr = np.array([[0.4, 1.0], [2.5, 1.0]])  # a factor 2 below and above the band, two inside
    assert calibration_penalty(ssr, band) == pytest.approx(2 * math.log(2) ** 2 / 4, rel=1e-12)  # float64: ~eps64
    assert calibration_penalty(np.array([[np.inf, 1.0]]), band) == math.inf
    assert calibration_penalty(np.array([[np.nan, 1.0]]), band) == math.inf


def test_calibration_weight_trades_crps_for_spread_skill_in_the_band(data, tmp_path):
    """The untrained tiny model's CRPS wants the widest spread; a band below it pulls the amplitude down."""
    keys = ["tune.channel_iterations=0", "tune.iterations=4"]
    free = tune(tiny_tune_config(data, tmp_path / "a.yaml", keys), MPI.COMM_SELF)
    band = ["tune.calibration_weight=10", "tune.spread_skill_band=[0.0005, 0.005]"]
    held = tune(tiny_tune_config(data, tmp_path / "b.yaml", keys + band), MPI.COMM_SELF)
    assert calibration_penalty(free.ssr_best, (0.0005, 0.005)) > 0.5  # the CRPS alone leaves the band
    assert held.best.amplitude < free.best.amplitude
    assert calibration_penalty(held.ssr_best, (0.0005, 0.005)) < 0.2 * calibration_penalty(free.ssr_best,
                                                                                             (0.0005, 0.005))
    # the reported objective is the CRPS ratio plus the weighted term, and the fragment shows the ratios
    expected = np.mean(held.crps_best / held.crps_start) + 10 * calibration_penalty(held.ssr_best, (0.0005, 0.005))
    # float64: the same ratios and penalty summed again, a few eps64 (was 1e-9 and approx's default 1e-6)
    assert held.objective_best == pytest.approx(expected, rel=1e-12)
    assert held.objective_start == pytest.approx(1 + 10 * calibration_penalty(held.ssr_start, (0.0005, 0.005)),
                                                 rel=1e-12)
    text = (tmp_path / "b.yaml").read_text()
    assert "plus 10 x the mean squared distance of log spread/skill (corrected) outside [0.0005, 0.005]" in text
    assert f"12h  u {held.ssr_start[1, 0]:.2f} -> {held.ssr_best[1, 0]:.2f}" in text


STOCHASTIC = ["model.stochastic=true", "model.noise_dim=6", "model.noise_length_km=3000"]


def test_noise_scale_is_tuned_and_written_to_the_model_section(data, tmp_path):
    """A stochastic model's noise scale is a parameter when asked for; the fragment sets model.noise_scale."""
    frag = tmp_path / "tuned" / "stochastic.yaml"
    keys = STOCHASTIC + ["tune.parameters=[noise_scale, amplitude]", "tune.iterations=3",
                         "tune.noise_scale_bounds=[0.25, 4.0]"]
    obj = Objective(tiny_tune_config(data, frag, keys), MPI.COMM_SELF)
    pc = obj.run.cfg.perturbation
    narrow, wide = obj.scores(pc, 0.25)[1], obj.scores(pc, 4.0)[1]
    assert np.all(wide > 2 * narrow)  # the scale reaches the members: 16x the noise, more than 2x the spread
    obj.close()
    result = tune(tiny_tune_config(data, frag, keys), MPI.COMM_SELF, command="test")
    assert 0.25 <= result.noise_scale <= 4.0 and result.objective_best <= 1.0
    assert result.evaluations <= 1 + 5 + 5  # start, 5 noise-scale probes, 5 amplitude probes
    text = frag.read_text()
    assert yaml.safe_load(text)["model"] == {"noise_scale": result.noise_scale}
    app = tmp_path / "ens.yaml"
    app.write_text("include: [tuned/stochastic.yaml]\nmodel: {stochastic: true, noise_dim: 6}\n")
    cfg = load_config(EnsembleConfig, app)
    assert cfg.model.noise_scale == result.noise_scale and cfg.model.noise_dim == 6
    assert cfg.perturbation == result.best
    # measured again from the fragment's values through the config, the objective is the one reported
    again = Objective(tiny_tune_config(data, frag, keys + [f"model.noise_scale={result.noise_scale}",
                                                           f"perturbation.amplitude={result.best.amplitude}"]),
                      MPI.COMM_SELF)
    ratio = again.crps(again.run.cfg.perturbation) / result.crps_start
    assert np.mean(ratio) == pytest.approx(result.objective_best, rel=1e-6)  # rerun with the same values, as above
    again.close()


def test_later_sweeps_retune_the_noise_scale_with_the_amplitudes(data, tmp_path):
    """With the noise scale and the amplitudes coupled (the best log noise scale is minus v's log amplitude
    change), one pass keeps the noise scale where it started; each later sweep re-tunes it first, so three
    sweeps walk towards the joint minimum (log v change 0.5, noise scale exp(-0.5)) and score lower."""
    from types import SimpleNamespace
    from hpc_fcn.ensemble.tune import Search

    class Coupled:  # the Objective interface Search uses, with a known minimum
        params = ["noise_scale", "channel_amplitude"]
        run = SimpleNamespace(channels=["u", "v", "z"])

        def __init__(self):
            self.seen = set()  # distinct candidates: the real Objective caches the others

        def scores(self, pc, noise_scale=None):
            self.seen.add((tuple(sorted(pc.channel_amplitude.items())), noise_scale or 1.0))
            la = math.log(pc.channel_amplitude["v"] / 0.1)
            ls = math.log(1.0 if noise_scale is None else noise_scale)
            return np.array([[1.0 + (ls + la) ** 2 + 0.5 * (la - 0.5) ** 2]]), np.ones((1, 1))

        def crps(self, pc):
            return self.scores(pc)[0]

    def search(sweeps):
        cfg = tiny_tune_config(data, tmp_path / "f.yaml", STOCHASTIC + [
            "perturbation.channel_amplitude={u: 0.1, v: 0.1, z: 0.1}",
            "tune.parameters=[noise_scale, channel_amplitude]", "tune.tune_channels=[v]", "tune.iterations=12",
            "tune.channel_iterations=12", f"tune.sweeps={sweeps}"])
        obj = Coupled()
        s = Search(cfg, obj)
        best, value = s.run()
        assert len(obj.seen) <= s.planned()
        return s.noise_scale, best.channel_amplitude["v"], value

    ns1, v1, value1 = search(1)
    ns3, v3, value3 = search(3)
    # at v's starting amplitude the best noise scale is 1 (the start, kept on ties); otherwise 12 golden steps
    # over [ln 0.5, ln 2] leave a bracket of 1.39 * 0.618^12 = 0.004 in log
    assert ns1 == pytest.approx(1.0, abs=0.01)
    start = 1.0 + 0.5 * 0.5 ** 2  # the objective divides by the start's CRPS
    # v: log 1/6, found to 2.2 * 0.618^12 = 0.007 (12 steps over ln 9); the objective is quadratic there: <= 7e-5
    assert value1 == pytest.approx((1.0 + 0.5 * (1 / 6 - 0.5) ** 2 + (1 / 6) ** 2) / start, abs=1e-3)
    assert ns3 < 0.8 and math.log(v3 / 0.1) > 0.3 and value3 < value1 - 0.03


def test_common_random_numbers_make_the_objective_smooth_in_the_amplitude(data, tmp_path):
    obj = Objective(tiny_tune_config(data, tmp_path / "f.yaml"), MPI.COMM_SELF)
    from dataclasses import replace
    pc = obj.run.cfg.perturbation
    a, b = obj.crps(replace(pc, amplitude=0.2)), obj.crps(replace(pc, amplitude=0.2 + 1e-4))
    # same member noise, scaled: a 5e-4 relative step moves the members by 5e-4 of their perturbation, so the
    # CRPS (Lipschitz in the members) by < 1e-3 relative while the spread is below the error
    assert np.allclose(a, b, rtol=1e-3, atol=0)
    assert obj.evaluations == 2 and obj.crps(replace(pc, amplitude=0.2)) is a  # cached
    obj.close()
    # fresh noise (another seed) moves this small ensemble's CRPS by its sampling error, ~2e-4, under that bound:
    # the step's change must be far below it (~3e-6 here; common random numbers are what make it small)
    fresh = Objective(tiny_tune_config(data, tmp_path / "g.yaml", ["ensemble.seed=12"]), MPI.COMM_SELF)
    assert np.abs(b / a - 1).max() < 0.1 * np.abs(fresh.crps(replace(pc, amplitude=0.2)) / a - 1).max()
    fresh.close()


def _cli(data, tmp_path, *overrides, n=1):
    cfg = tmp_path / "tiny_tune.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tune_data(data, tmp_path / "frag.yaml")))
    prog = [sys.executable, "-m", "hpc_fcn.ensemble.tune", str(cfg), *overrides]
    cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(n), *prog] if n > 1 else prog
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=CLI_ENV, cwd=ROOT)


@pytest.mark.parametrize("override, message", [
    ("tune.members=1", "config key 'tune.members': fair CRPS needs at least 2 members, got 1"),
    ("tune.leads=[6h, 5x]", "config key 'tune.leads[1]': '5x' is not a lead time"),
    ("tune.channels=[u, q]", "config key 'tune.channels': q not among the model channels u, v, z"),
    ("tune.parameters=[length_scale_km]", "config key 'tune.parameters[0]': length_scale_km is not a parameter "
                                          "of perturbation.method=gaussian"),
    ("tune.start=2001-12-30T00", "config key 'tune.start': no initial time of the 'test' split lies in"),
    ("tune.start=2001-01-10T12", "config key 'tune.start': no initial time of the 'test' split has 0 earlier "
                                 "and 2 later steps"),
    ("tune.amplitude_bounds=[0.5, 0.1]", "config key 'tune.amplitude_bounds': need 0 < low < high"),
    ("tune.spread_skill_band=[1.2, 0.8]", "config key 'tune.spread_skill_band': need 0 < low <= high"),
    ("tune.calibration_weight=-1", "config key 'tune.calibration_weight': must be >= 0, got -1"),
    ("tune.parameters=[noise_scale]", "config key 'tune.parameters[0]': noise_scale scales a stochastic model's "
                                      "noise; set model.stochastic=true"),
    ("tune.noise_scale_bounds=[2, 1]", "config key 'tune.noise_scale_bounds': need 0 < low < high"),
    ("tune.itertions=3", "config key 'tune.itertions': unknown key (did you mean 'iterations'?)"),
])
def test_cli_errors_are_one_line(data, tmp_path, override, message):
    proc = _cli(data, tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == [f"error: {message}"] or message in error_lines(proc)[0], proc.stderr
    assert len(error_lines(proc)) == 1 and not (tmp_path / "frag.yaml").exists()


def test_cli_writes_the_fragment(data, tmp_path):
    proc = _cli(data, tmp_path, "tune.channel_iterations=0", "tune.iterations=1")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "frag.yaml").read_text()
    assert "# command: python -m hpc_fcn.ensemble.tune " in text and "tune.iterations=1" in text
    assert "tuned gaussian: objective 1.0000 ->" in proc.stderr


def test_missing_include_names_the_key(tmp_path):
    cfg = tmp_path / "ens.yaml"
    cfg.write_text("include: [tuned/none.yaml]\n")
    with pytest.raises(ConfigError, match=r"^config key 'include\[0\]' in .*ens.yaml: .*tuned/none.yaml does not exist"):
        load_config(EnsembleConfig, cfg)


def test_cli_error_on_4_ranks_is_one_line_and_every_rank_fails(data, tmp_path):
    proc = _cli(data, tmp_path, "tune.channels=[u, q]", n=4)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == ["error: config key 'tune.channels': q not among the model channels u, v, z"], \
        proc.stderr


def test_shipped_fragments_validate(tmp_path):
    frags = sorted((ROOT / "config" / "tuned").glob("*.yaml"))
    assert frags
    for frag in frags:
        cfg = tmp_path / "ens.yaml"
        cfg.write_text(f"include: [{frag}]\n")
        assert set(load_config(EnsembleConfig, cfg).perturbation.channel_amplitude) == {"u", "v", "z", "vo", "d"}
