"""Counter-based random numbers on any device: Philox4x32-10 in torch integer ops, and normals from it.

A normal is a pure function of (key, counter): no generator state, so the value at a global grid
index is the same whether a rank generates the whole field or only its window, on whichever device,
in whatever batch. torch has no stateless per-element generator (its Philox offsets are per
generator and per launch, and the CPU generator is a Mersenne twister), hence this one:
Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), checked against Random123's
known-answer vectors in the tests. 32-bit words live in int64 tensors; a 32 x 32-bit product is one
int64 multiply whose two's-complement wrap-around keeps all 64 bits of the unsigned product (checked
against Python integers in the tests).

The normals come in pairs from Box-Muller: one Philox block gives a 52-bit uniform for the radius and
a 32-bit one for the angle, and counter ``i >> 1`` serves normals ``i`` (cosine branch, even ``i``) and
``i + 1`` (sine branch). ``log``, ``sin`` and ``cos`` are evaluated by series in float64 with only +, -,
*, / and sqrt, which IEEE rounds exactly: torch's vectorised CPU kernels and their scalar tails can
differ in the last bit for ``log``/``sin``, which would make a value depend on its position in the tensor.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
ROUNDS = 10

_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_LOG_TERMS = 12  # atanh series of log(m), |s| < 0.172: 0.0295**12 / 25 < 1e-19
_TRIG_TERMS = 12  # Taylor series of sin/cos on [0, pi/2]: (pi/2)**24 / 24! < 1e-18


def _mulhilo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product ``a * x`` (a and every x below 2**32)."""
    p = x * a  # wraps modulo 2**64: the bits are the unsigned product's
    return (p >> 32) & MASK32, p & MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of the four 32-bit counter words (int64 tensors of one shape) under a 64-bit key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _log_unit(u: torch.Tensor) -> torch.Tensor:
    """Natural log of float64 ``u`` in (0, 1]: exponent times ln 2 plus the atanh series of the mantissa."""
    m, e = torch.frexp(u)  # u = m * 2**e, m in [0.5, 1)
    low = m < _SQRT_HALF
    m = torch.where(low, m * 2.0, m)  # m in [sqrt(1/2), sqrt(2))
    e = (e - low.to(e.dtype)).to(torch.float64)
    s = (m - 1.0) / (m + 1.0)
    t = s * s
    p = torch.full_like(t, 1.0 / (2 * _LOG_TERMS + 1))
    for k in range(_LOG_TERMS - 1, -1, -1):
        p = p * t + 1.0 / (2 * k + 1)
    return e * _LN2 + 2.0 * s * p


def _sin_cos(phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of float64 ``phi`` in [0, pi/2] by Taylor series (Horner in phi**2)."""
    t = phi * phi
    s = torch.full_like(t, 1.0)
    c = torch.full_like(t, 1.0)
    for k in range(_TRIG_TERMS, 0, -1):
        s = 1.0 - s * t / ((2 * k) * (2 * k + 1))
        c = 1.0 - c * t / ((2 * k - 1) * (2 * k))
    return s * phi, c


def normal_pairs(pair: torch.Tensor, key: tuple[int, int], stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two standard normals (float32) of each non-negative int64 counter ``pair``: normals 2 p and 2 p + 1."""
    c0 = pair & MASK32
    c1 = pair >> 32
    c2 = torch.full_like(pair, stream & MASK32)
    x0, x1, x2, _ = philox4x32((c0, c1, c2, torch.zeros_like(pair)), key)
    # radius: a 52-bit uniform in (0, 1), exactly representable
    u = (((x0 << 20) + (x1 >> 12)).to(torch.float64) + 0.5) * 2.0 ** -52
    radius = torch.sqrt(-2.0 * _log_unit(u))
    # angle: the top two bits pick the quadrant, the other 30 the angle within it
    quadrant = x2 >> 30
    phi = (((x2 & 0x3FFFFFFF).to(torch.float64) + 0.5) * 2.0 ** -30) * (math.pi / 2)
    sin, cos = _sin_cos(phi)
    # (cos, sin) of q pi/2 + phi for q = 0..3: (cos, sin), (-sin, cos), (-cos, -sin), (sin, -cos)
    c = torch.where(quadrant == 0, cos, torch.where(quadrant == 1, -sin, torch.where(quadrant == 2, -cos, sin)))
    s = torch.where(quadrant == 0, sin, torch.where(quadrant == 1, cos, torch.where(quadrant == 2, -sin, -cos)))
    return (radius * c).to(torch.float32), (radius * s).to(torch.float32)


def normals(index: torch.Tensor, key: tuple[int, int], stream: int = 0) -> torch.Tensor:
    """Standard normals (float32) at the non-negative int64 counters ``index`` (any shape, any device)."""
    even, odd = normal_pairs(index >> 1, key, stream)
    return torch.where((index & 1).bool(), odd, even)


def row_normals(start: torch.Tensor, length: int, offset: int, key: tuple[int, int], stream: int = 0) -> torch.Tensor:
    """``normals(start[..., None] + offset + arange(length))`` for EVEN ``start`` (each row's first counter),
    drawing every pair once instead of twice: the fast path for windows of a grid with an even row length."""
    lo = offset - offset % 2
    hi = offset + length + (offset + length) % 2
    pairs = (start.unsqueeze(-1) + torch.arange(lo, hi, 2, device=start.device)) >> 1
    even, odd = normal_pairs(pairs, key, stream)
    both = torch.stack([even, odd], dim=-1).flatten(-2)
    return both[..., offset - lo: offset - lo + length]
