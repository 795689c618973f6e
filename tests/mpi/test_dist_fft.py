"""Distributed rfft2/irfft2 against torch.fft of the gathered field, values, gradients and volume."""
import pytest
import torch

from hpc_fcn.parallel import DistributedFFT2, ProcessGrid
from hpc_fcn.parallel.testing import rel_err, sub_comm
from hpc_fcn.tracing import Tracer

BACKENDS = ["mpi", "torch"]
LAYOUTS = [(2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (3, 1), (1, 3)]


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def check_irfft2(f, S, H, W):
    """``f.irfft2`` of this rank's mode columns of the full spectrum ``S`` (B, H, W//2+1, C) equals the window of
    the serial irfft2 of ``S``, and so does its gradient."""
    S = S.requires_grad_()
    y_ref = torch.fft.irfft2(S, s=(H, W), dim=(1, 2), norm="ortho")
    S_loc = S.detach()[:, :, f.mode_cols].clone().requires_grad_()
    y = f.irfft2(S_loc)
    assert rel_err(y, y_ref[:, f.rows, f.cols]) < 1e-6  # float32 FFT bound, as for the forward transform
    d = randn(6, *y_ref.shape)
    (y_ref * d).sum().backward()
    (y * d[:, f.rows, f.cols]).sum().backward()
    assert rel_err(S_loc.grad, S.grad[:, :, f.mode_cols]) < 1e-6  # float32 FFT bound, as above


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", LAYOUTS, ids=lambda hw: f"h{hw[0]}w{hw[1]}")
def test_rfft2_irfft2_match_serial(backend, hw):
    h, w = hw
    with sub_comm(h * w) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, h=h, w=w, backend=backend, tracer=Tracer(rank=comm.rank)) as grid:
            for H, W in ((8, 16), (9, 18)):  # even and uneven splits
                B, C = 2, 5
                f = DistributedFFT2(grid, H, W)
                full = randn(1, B, H, W, C).requires_grad_()
                ref = torch.fft.rfft2(full, dim=(1, 2), norm="ortho")
                x = full.detach()[:, f.rows, f.cols].clone().requires_grad_()
                grid.tracer.reset()
                X = f.rfft2(x)
                sent = sum(v["bytes"] for k, v in grid.tracer.summary().items() if "all_to_all" in k)
                assert sent == f.transpose_bytes(B, C, itemsize=4), "recorded volume equals the analytic volume"
                assert X.shape == f.spectral_shape(B, C)
                # float32 FFTs: error ~ 2^-24 * log2(H*W) ~ 5e-7 in norm; an order-of-magnitude margin below 1e-5
                assert rel_err(X, ref[:, :, f.mode_cols]) < 1e-6
                # gradient of a real functional of the spectrum
                c = torch.complex(randn(2, *ref.shape), randn(3, *ref.shape))
                (ref * c).real.sum().backward()
                (X * c[:, :, f.mode_cols]).real.sum().backward()
                assert rel_err(x.grad, full.grad[:, f.rows, f.cols]) < 1e-6  # the adjoint FFTs: same bound
                # inverse: of our own spectrum, and of an arbitrary spectrum (gradient included)
                assert rel_err(f.irfft2(X.detach()), x.detach()) < 1e-6  # forward + inverse: same bound
                check_irfft2(f, torch.complex(randn(4, *ref.shape), randn(5, *ref.shape)), H, W)


def test_spectral_layout_covers_every_mode_once():
    with sub_comm(4) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, h=2, w=2) as grid:
            f = DistributedFFT2(grid, 9, 18)
            owned = torch.zeros(9, 10)
            owned[f.mode_rows, f.mode_cols] = 1
            assert torch.equal(grid.spatial.all_reduce(owned), torch.ones(9, 10))
            assert f.mode_rows == slice(0, 9)


@pytest.mark.parametrize("hw", [(2, 1), (1, 2), (2, 2), (4, 1), (1, 3)], ids=lambda hw: f"h{hw[0]}w{hw[1]}")
def test_kept_modes_match_serial(hw):
    """``modes=K``: the columns [0, K) of rfft2, split over every rank; irfft2 of them with the rest zero."""
    h, w = hw
    with sub_comm(h * w) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, h=h, w=w, tracer=Tracer(rank=comm.rank)) as grid:
            H, W, K, B, C = 9, 18, 5, 2, 3  # the AFNO window of a 9-row grid keeps 5 of its 10 mode columns
            f = DistributedFFT2(grid, H, W, modes=K)
            assert f.mode_cols.stop - f.mode_cols.start >= 1 and sum(f.mode_col_sizes) == K
            full = randn(1, B, H, W, C).requires_grad_()
            ref = torch.fft.rfft2(full, dim=(1, 2), norm="ortho")[:, :, :K]
            x = full.detach()[:, f.rows, f.cols].clone().requires_grad_()
            grid.tracer.reset()
            X = f.rfft2(x)
            sent = sum(v["bytes"] for k, v in grid.tracer.summary().items() if "all_to_all" in k)
            assert sent == f.transpose_bytes(B, C, itemsize=4) and X.shape == f.spectral_shape(B, C)
            assert rel_err(X, ref[:, :, f.mode_cols]) < 1e-6  # float32 FFT bound, as in the full transform
            c = torch.complex(randn(2, *ref.shape), randn(3, *ref.shape))
            (ref * c).real.sum().backward()
            (X * c[:, :, f.mode_cols]).real.sum().backward()
            assert rel_err(x.grad, full.grad[:, f.rows, f.cols]) < 1e-6  # the adjoint: same bound
            S = torch.complex(randn(4, B, H, W // 2 + 1, C), randn(5, B, H, W // 2 + 1, C))
            S[:, :, K:] = 0
            check_irfft2(f, S, H, W)
