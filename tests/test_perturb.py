"""Perturbations: keyed by (seed, time, member), independent of the window and the device, with the stated
amplitude; the counter-based generator under them against Philox's known answers."""
import numpy as np
import pytest
import torch

from hpc_fcn.config import ConfigError
from hpc_fcn.ensemble.config import PerturbationConfig
from hpc_fcn.ensemble.perturb import NoiseField, Perturber, breed, member_key
from hpc_fcn.ensemble.philox import _M0, _M1, _mulhilo, normals, philox4x32, row_normals

CH = ["u", "v", "z"]
GPU = torch.cuda.is_available()


@pytest.mark.parametrize("counter,key,expected", [  # Random123's kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff, 0xffffffff), (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
    assert tuple(int(w) for w in out) == expected


def test_wrapping_int64_product_keeps_the_unsigned_64_bits():
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randint(0, 2 ** 32, (100_000,), generator=g), torch.tensor([0, 1, 2 ** 32 - 1])])
    for m in (_M0, _M1, 2 ** 32 - 1):
        hi, lo = _mulhilo(m, x)
        exact = [int(v) * m for v in x[::997].tolist() + x[-3:].tolist()]
        assert hi[::997].tolist() + hi[-3:].tolist() == [p >> 32 for p in exact]
        assert lo[::997].tolist() + lo[-3:].tolist() == [p & 0xFFFFFFFF for p in exact]


def test_normals_are_standard_normal_and_independent():
    z = normals(torch.arange(400_000), (11, 12)).double()
    # Monte Carlo at n = 400k: 3 and 4.5 standard errors (1 / sqrt(n), 1 / sqrt(2 n)); the counter-based draws
    # are the same bits on every kernel, so these never flake
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 5e-3
    assert abs((z ** 3).mean()) < 2e-2 and abs((z ** 4).mean() - 3) < 4e-2  # 3.3 and 2.6 se: sqrt(15 / n), sqrt(96 / n)
    # quantiles of 100k: >= 7 standard errors sqrt(p (1 - p) / n) / phi(q)
    for p, expect in ((0.5, 0.0), (0.8413447, 1.0), (0.9772499, 2.0), (0.0013499, -3.0)):
        assert abs(torch.quantile(z[:100_000], p).item() - expect) < 0.03 + 0.05 * abs(expect)
    other_key = normals(torch.arange(400_000), (11, 13)).double()
    other_stream = normals(torch.arange(400_000), (11, 12), stream=1).double()
    for w in (other_key, other_stream, z.roll(1)):
        assert abs((z * w).mean()) < 5e-3  # uncorrelated: 3 standard errors (1 / sqrt(n))
    assert z.abs().max() < 8.6  # the 52-bit radius bounds |z| by sqrt(104 ln 2)


def test_normals_do_not_depend_on_the_position_in_the_tensor():
    # CPU kernels run vector bodies and scalar tails: every offset and length must give the same bits
    full = normals(torch.arange(5, 300), (3, 4))
    for start in range(0, 20):
        for length in (1, 7, 33, 64, 101):
            part = normals(torch.arange(5 + start, 5 + start + length), (3, 4))
            assert torch.equal(part, full[start:start + length])
    assert torch.equal(normals(torch.arange(5, 300).view(5, 59).t(), (3, 4)), full.view(5, 59).t())
    # the pairwise fast path for rows of a grid gives the same numbers at every offset and length
    rows = torch.tensor([[0], [40], [120]]).view(3)
    for offset in range(0, 5):
        for length in (1, 2, 7, 30):
            ref = normals(rows[:, None] + offset + torch.arange(length), (3, 4))
            assert torch.equal(row_normals(rows, length, offset, (3, 4)), ref)


@pytest.mark.parametrize("method", ["gaussian", "spherical"])
def test_batched_members_equal_single_members(method):
    p = perturber(method)
    x0 = torch.zeros(3, 16, 32)
    both = p.perturb(x0, 1000, [2, 3, 5])
    for i, m in enumerate([2, 3, 5]):
        assert torch.equal(both[i], p.perturb(x0, 1000, [m])[0])


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["gaussian", "spherical"])
def test_noise_generated_on_the_gpu_equals_the_cpu(method):
    p = perturber(method, rows=slice(3, 13), cols=slice(5, 29))
    gpu, cpu = p.initial_noise(1000, 3, "cuda"), p.initial_noise(1000, 3)
    assert gpu.is_cuda
    # integer counters and IEEE +-*/sqrt: identical bits for white noise; the transform rounds differently (fp32
    # sums of <= 16 Legendre terms and a 32-point FFT of unit-rms noise: ~(16 + 5) * 2^-24 ~ 1.3e-6)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0 if method == "gaussian" else 1e-5,
                               atol=0 if method == "gaussian" else 1e-5)


def perturber(method="gaussian", rows=slice(0, 16), cols=slice(0, 32), **kw):
    cfg = PerturbationConfig(method=method, **kw)
    return Perturber(cfg, channels=CH, nlat=16, nlon=32, rows=rows, cols=cols, seed=7, control=True)


@pytest.mark.parametrize("method", ["gaussian", "spherical"])
def test_noise_is_keyed_and_window_independent(method):
    full = perturber(method).initial_noise(1000, 3)
    for rows, cols in ((slice(5, 11), slice(8, 24)), (slice(0, 3), slice(7, 32)), (slice(15, 16), slice(3, 4))):
        part = perturber(method, rows=rows, cols=cols).initial_noise(1000, 3)
        # bitwise: white noise from the same counters, spherical the same global field sliced
        torch.testing.assert_close(part, full[:, rows, cols], rtol=0, atol=0)
    assert not torch.equal(full, perturber(method).initial_noise(1000, 4))
    assert not torch.equal(full, perturber(method).initial_noise(1006, 3))
    torch.testing.assert_close(full, perturber(method).initial_noise(1000, 3), rtol=0, atol=0)  # the same draw: bitwise


def test_white_noise_on_a_grid_of_odd_width_is_window_independent_too():
    field, key = NoiseField("gaussian", 5, 7, 2), member_key(1, 2, 3, 1)
    full = field.sample(key)
    assert torch.equal(field.sample(key, slice(1, 4), slice(2, 5)), full[:, 1:4, 2:5])
    even = NoiseField("gaussian", 5, 8, 2).sample(key)  # the same counters on the first row: 0..6
    assert torch.equal(even[0, 0, :7], full[0, 0]) and not torch.equal(even[0, 1, :7], full[0, 1])


def test_amplitude_is_in_normalised_units_per_channel():
    p = perturber("gaussian", amplitude=0.3, channel_amplitude={"z": 0.1})
    noise = torch.stack([p.initial_noise(0, m) for m in range(1, 41)])
    std = noise.std(dim=(0, 2, 3))
    # Monte Carlo: a std of n = 40 * 16 * 32 draws has relative sd 1 / sqrt(2 n) = 0.5 %: 0.05 is 10 sd
    np.testing.assert_allclose(std.numpy(), [0.3, 0.3, 0.1], rtol=0.05)
    assert torch.count_nonzero(p.initial_noise(0, 0)) == 0  # the control member
    with pytest.raises(ConfigError, match="unknown channel"):
        perturber(channel_amplitude={"t2m": 0.1})


def test_spherical_noise_is_smooth_and_unit_rms():
    key = member_key(1, 2, 3, 4)
    white = NoiseField("gaussian", 32, 64, 2).sample(key)
    smooth = NoiseField("spherical", 32, 64, 2, length_scale_km=1500).sample(key)
    assert smooth.shape == (2, 32, 64)
    # fp32: normalised by its fp32 rms and measured again the same way: two cascaded sums of 2048 squares
    # (~log2(2048) * 2^-24 = 7e-7 each), halved by the sqrt
    np.testing.assert_allclose(smooth.pow(2).mean(dim=(1, 2)).sqrt().numpy(), [1.0, 1.0], rtol=1e-5)

    def lag1(x):  # correlation of neighbouring longitudes
        return float((x * x.roll(1, -1)).mean() / x.pow(2).mean())
    assert lag1(smooth) > 0.8 and abs(lag1(white)) < 0.1
    shorter = NoiseField("spherical", 32, 64, 2, length_scale_km=600).sample(key)
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
    # fp32 rms of 128 points in breed and again here, plus the rescale: <= 2 * 127 / 2 * 2^-24 + a few 2^-24 ~ 8e-6
    # even with sequential sums (was torch's default atol 1e-5, i.e. 1e-4 of these amplitudes)
    torch.testing.assert_close(rms(out)[..., 0, 0], amp[:, 0, 0].expand(4, 3), rtol=1e-5, atol=0)
    # the bred vector is the rescaled growth of the last cycle, not the seed (they differ by O(1), far above 1e-2)
    assert not torch.allclose(out / rms(out), seeds / rms(seeds), atol=1e-2)
