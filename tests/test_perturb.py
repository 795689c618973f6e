"""Perturbations: keyed by (seed, time, member), independent of the window, with the stated amplitude."""
import numpy as np
import pytest
import torch

from hpc_fcn.config import ConfigError
from hpc_fcn.ensemble.config import PerturbationConfig
from hpc_fcn.ensemble.perturb import NoiseField, Perturber, breed, member_generator

CH = ["u", "v", "z"]


def perturber(method="gaussian", rows=slice(0, 16), cols=slice(0, 32), **kw):
    cfg = PerturbationConfig(method=method, **kw)
    return Perturber(cfg, channels=CH, nlat=16, nlon=32, rows=rows, cols=cols, seed=7, control=True)


@pytest.mark.parametrize("method", ["gaussian", "spherical"])
def test_noise_is_keyed_and_window_independent(method):
    full = perturber(method).initial_noise(1000, 3)
    part = perturber(method, rows=slice(5, 11), cols=slice(8, 24)).initial_noise(1000, 3)
    torch.testing.assert_close(part, full[:, 5:11, 8:24], rtol=0, atol=0)
    assert not torch.equal(full, perturber(method).initial_noise(1000, 4))
    assert not torch.equal(full, perturber(method).initial_noise(1006, 3))
    torch.testing.assert_close(full, perturber(method).initial_noise(1000, 3), rtol=0, atol=0)


def test_amplitude_is_in_normalised_units_per_channel():
    p = perturber("gaussian", amplitude=0.3, channel_amplitude={"z": 0.1})
    noise = torch.stack([p.initial_noise(0, m) for m in range(1, 41)])
    std = noise.std(dim=(0, 2, 3))
    np.testing.assert_allclose(std.numpy(), [0.3, 0.3, 0.1], rtol=0.05)
    assert torch.count_nonzero(p.initial_noise(0, 0)) == 0  # the control member
    with pytest.raises(ConfigError, match="unknown channel"):
        perturber(channel_amplitude={"t2m": 0.1})


def test_spherical_noise_is_smooth_and_unit_rms():
    g = member_generator(1, 2, 3, 4)
    white = NoiseField("gaussian", 32, 64, 2).sample(g)
    smooth = NoiseField("spherical", 32, 64, 2, length_scale_km=1500).sample(member_generator(1, 2, 3, 4))
    assert smooth.shape == (2, 32, 64)
    np.testing.assert_allclose(smooth.pow(2).mean(dim=(1, 2)).sqrt().numpy(), [1.0, 1.0], rtol=1e-5)

    def lag1(x):  # correlation of neighbouring longitudes
        return float((x * x.roll(1, -1)).mean() / x.pow(2).mean())
    assert lag1(smooth) > 0.8 and abs(lag1(white)) < 0.1
    shorter = NoiseField("spherical", 32, 64, 2, length_scale_km=600).sample(member_generator(1, 2, 3, 4))
    assert lag1(shorter) < lag1(smooth)


def test_breeding_rescales_to_the_amplitude():
    torch.manual_seed(0)
    analyses = [torch.randn(3, 8, 16) for _ in range(3)]
    lin = torch.nn.Conv2d(3, 3, 3, padding=1)

    def step(x):
        with torch.no_grad():
            return x + torch.tanh(lin(x))
    amp = torch.tensor([0.3, 0.2, 0.1]).view(3, 1, 1)
    seeds = torch.randn(4, 3, 8, 16) * 0.3

    def rms(d):
        return d.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    out = breed(lambda c: analyses[c], seeds, step, cycles=3, steps=2, amplitude=amp, global_rms=rms)
    torch.testing.assert_close(rms(out)[..., 0, 0], amp[:, 0, 0].expand(4, 3))
    # the bred vector is the rescaled growth of the last cycle, not the seed
    assert not torch.allclose(out / rms(out), seeds / rms(seeds), atol=1e-2)
