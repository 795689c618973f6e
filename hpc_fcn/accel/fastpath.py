"""An equivalent, faster forward of the serial AFNONet for inference, split into compilable dense regions.

Same weights, same arithmetic up to fp32 round-off; these changes:
- The AFNO filter FFTs only what it keeps: ``rfft`` over longitude, keep the mode-window columns,
  ``fft`` over latitude; the inverse runs ``ifft`` on those columns and lets ``irfft(n=W)`` zero-pad
  the rest. This replaces ``rfft2`` + zeros + scatter + ``irfft2`` (the dropped modes are zero either way).
- The complex block-diagonal MLP runs as one real GEMM per layer on the interleaved (re, im)
  view of the spectrum: ``[re, im] @ [[W0, W1], [-W1, W0]]`` (no ``.real``/``.imag`` copies, 1 GEMM not 4).
- The dense work between two filters (residual adds, norm2, MLP, next norm1) is one function, so
  ``torch.compile`` can fuse it; the complex FFTs stay eager and in fp32.
- Without autograd the residual sums and GELU run in place and the filter's intermediates are freed before the
  MLP: fewer fresh buffers (on a CPU each costs its page faults again at every pass) and a smaller peak.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.afnonet import AFNONet, Mlp, add_noise, mode_window, unpatchify


def patch_embed(x: torch.Tensor, proj: nn.Conv2d) -> torch.Tensor:
    """``proj`` (Conv2d, kernel = stride = patch) of images (B, C, H, W) as one GEMM on the patches, returned
    channels-last (B, h, w, embed) and contiguous; oneDNN's convolution of this shape was about 6x slower on a CPU."""
    B, C, H, W = x.shape
    p1, p2 = proj.kernel_size
    patches = x.reshape(B, C, H // p1, p1, W // p2, p2).permute(0, 2, 4, 1, 3, 5).reshape(B, H // p1, W // p2, -1)
    return F.linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias)


def interleaved_weight(w: torch.Tensor) -> torch.Tensor:
    """[2, nb, i, o] (real, imaginary) -> [nb, 2i, 2o] acting on interleaved (re, im) vectors."""
    w0, w1 = w[0].float(), w[1].float()
    return torch.stack([torch.stack([w0, w1], -1), torch.stack([-w1, w0], -1)], dim=2).reshape(
        w0.shape[0], 2 * w0.shape[1], 2 * w0.shape[2])


def interleaved_bias(b: torch.Tensor) -> torch.Tensor:
    """[2, nb, o] -> [nb, 2o] in (re, im) interleaved order."""
    return torch.stack([b[0].float(), b[1].float()], -1).reshape(b.shape[1], -1)


def spectral_mlp(z: torch.Tensor, m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor,
                 lambd: float) -> torch.Tensor:
    """Block MLP on interleaved modes ``z`` (N, nb, 2bs): dense block-diagonal weights if 2-D, else per block."""
    n, nb, k = z.shape
    with torch.autocast(device_type=z.device.type, enabled=False):  # the filter is an fp32 island
        if m1.dim() == 2:  # block-diagonal matrix: one plain GEMM (cheaper than many tiny per-block GEMMs)
            h = F.relu(torch.addmm(c1, z.reshape(n, nb * k), m1))
            o = torch.addmm(c2, h, m2)
        else:
            zt = z.transpose(0, 1)  # (nb, N, 2bs)
            h = F.relu(torch.baddbmm(c1.unsqueeze(1), zt, m1))
            o = torch.baddbmm(c2.unsqueeze(1), h, m2).transpose(0, 1)
        return F.softshrink(o, lambd).reshape(n, -1)


def mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)``; without autograd the published Mlp's GELU runs in place on fc1's output (one hidden-size
    buffer instead of two: the largest tensors of a pass)."""
    if torch.is_grad_enabled() or type(mlp) is not Mlp or type(mlp.act) is not nn.GELU:
        return mlp(x)
    h = mlp.fc1(x)
    torch.ops.aten.gelu_(h, approximate=mlp.act.approximate)
    return mlp.fc2(h)


def block_tail(norm2: nn.Module, mlp: nn.Module, norm1_next: nn.Module | None, s: torch.Tensor,
               x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Finish a block from ``s`` (norm1's output plus the filter's) and the residual ``x``, and start the next block:
    the fusable dense region. Without autograd the sums accumulate in place (``s`` is consumed)."""
    if torch.is_grad_enabled():
        x = s + x
        x = x + mlp(norm2(x))
    else:
        x = add_into(s, x)
        x = add_into(mlp_forward(mlp, norm2(x)), x)  # m + x is x + m, bitwise
    return x, (norm1_next(x) if norm1_next is not None else None)


def add_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, in ``a``'s buffer (``a`` is consumed) unless the sum promotes to another dtype (under autocast a
    bf16 MLP output plus the fp32 residual stream is fp32, as in the published forward)."""
    return a.add_(b) if a.dtype == torch.promote_types(a.dtype, b.dtype) else a + b


class FusedAFNONet(nn.Module):
    """Inference forward of an :class:`AFNONet` that shares its modules; spectral weights are snapshotted."""

    # block-diagonal spectral weights become one dense GEMM when the blocks are this small or smaller
    DENSE_SPECTRAL_MAX_BLOCK = 8

    def __init__(self, net: AFNONet, spectral: str = "auto"):
        super().__init__()
        if not isinstance(net, AFNONet):
            raise TypeError(f"FusedAFNONet needs a serial AFNONet, got {type(net).__name__}")
        self.net = net
        self.rows, self.cols = mode_window(net.h, net.hard_thresholding_fraction)
        self.kept = min(self.cols.stop, net.w // 2 + 1)
        self.all_rows = self.rows.start == 0 and self.rows.stop >= net.h
        bs = net.embed_dim // net.num_blocks
        if spectral == "auto":
            spectral = "dense" if bs <= self.DENSE_SPECTRAL_MAX_BLOCK else "blocked"
        if spectral not in ("dense", "blocked"):
            raise ValueError(f"spectral must be auto, dense or blocked, got {spectral!r}")
        self.spectral = spectral
        for i, blk in enumerate(net.blocks):
            f = blk.filter
            if f.hidden_size_factor != 1 and spectral == "dense":
                raise ValueError("dense spectral weights need hidden_size_factor 1")
            m1, m2 = interleaved_weight(f.w1.detach()), interleaved_weight(f.w2.detach())
            c1, c2 = interleaved_bias(f.b1.detach()), interleaved_bias(f.b2.detach())
            if spectral == "dense":
                m1, m2, c1, c2 = torch.block_diag(*m1), torch.block_diag(*m2), c1.reshape(-1), c2.reshape(-1)
            for name, t in (("m1", m1), ("c1", c1), ("m2", m2), ("c2", c2)):
                self.register_buffer(f"spec{i}_{name}", t.contiguous(), persistent=False)
        # the regions torch.compile may replace (see hpc_fcn.accel.compile)
        self.embed_fn = self.embed
        self.spectral_fn = spectral_mlp
        self.tail_fn = block_tail
        self.head_fn = self.head

    def spectral_weights(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"spec{i}_{k}") for k in ("m1", "c1", "m2", "c2"))

    def embed(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        t = patch_embed(x, net.patch_embed.proj) + net.pos_embed.reshape(1, net.h, net.w, net.embed_dim)
        t = add_noise(net, t, noise)
        return t, net.blocks[0].norm1(t)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.net.head(x), self.net.patch_size, self.net.out_chans)

    def forward_modes(self, n: torch.Tensor) -> torch.Tensor:
        """Kept Fourier modes of ``n`` (B, h, w, C) as interleaved reals (B*rows*kept, nb, 2bs), fp32."""
        with torch.autocast(device_type=n.device.type, enabled=False):
            s = torch.fft.rfft(n.float(), dim=2, norm="ortho")[:, :, :self.kept]
            s = torch.fft.fft(s, dim=1, norm="ortho")
            if not self.all_rows:
                s = s[:, self.rows]
            nb = self.net.num_blocks
            return torch.view_as_real(s).reshape(-1, nb, 2 * (n.shape[-1] // nb))

    def inverse_modes(self, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Grid values (B, h, w, C) fp32 of the kept modes ``z`` (every other mode is zero)."""
        B, H, W, C = like.shape
        with torch.autocast(device_type=like.device.type, enabled=False):
            rows = H if self.all_rows else self.rows.stop - self.rows.start
            s = torch.view_as_complex(z.reshape(B, rows, self.kept, C, 2))
            if not self.all_rows:
                full = s.new_zeros(B, H, self.kept, C)
                full[:, self.rows] = s
                s = full
            s = torch.fft.ifft(s, dim=1, norm="ortho")
            return torch.fft.irfft(s, n=W, dim=2, norm="ortho")  # zero-pads the dropped columns

    def filter_added(self, i: int, n: torch.Tensor) -> torch.Tensor:
        """``n`` + block ``i``'s AFNO filter of ``n`` (the published filter adds its input back); without autograd
        in ``n``'s buffer (``n`` is consumed), and the modes and filter output are freed before the MLP.

        ``n`` comes first: the sum takes its channels-last layout. irfft's output has the channels strided; a sum
        that took that layout made every later op on the residual stream traverse it strided (at 90 x 180 x 768
        tokens a block's two adds took 97 ms that way, 29 ms now). Addition commutes exactly: bitwise the same."""
        z = self.spectral_fn(self.forward_modes(n), *self.spectral_weights(i), self.net.sparsity_threshold)
        y = self.inverse_modes(z, n).to(n.dtype)
        del z
        return n + y if torch.is_grad_enabled() else n.add_(y)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        net = self.net
        if tuple(x.shape[-2:]) != net.img_size:
            raise ValueError(f"input grid {tuple(x.shape[-2:])} does not match img_size {net.img_size}")
        h, n = self.embed_fn(x) if noise is None else self.embed_fn(x, noise)
        for i, blk in enumerate(net.blocks):
            nxt = net.blocks[i + 1].norm1 if i + 1 < len(net.blocks) else None
            # the sum is not named here: the tail consumes it, and it is freed before the next filter
            if noise is not None and i + 1 < net.noise_blocks:  # the next block takes noise before its norm
                h, _ = self.tail_fn(blk.norm2, blk.mlp, None, self.filter_added(i, n), h)
                h = add_noise(net, h, noise, i + 1)
                n = nxt(h)
            else:
                h, n = self.tail_fn(blk.norm2, blk.mlp, nxt, self.filter_added(i, n), h)
        return self.head_fn(h)
