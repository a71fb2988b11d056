"""The orthogonal polar factor U V^T of a matrix G = U S V^T by a few odd quintic polynomial steps
X <- a X + (b A + c A^2) X, A = X X^T: each step maps every singular value s to a s + b s^3 + c s^5, and only matmuls
are needed (bf16 on GPUs). The polynomials are Polar Express's (Amsel, Persson, Musco, Gower 2025): each step's quintic
is the minimax-optimal one for the interval the singular values are known to lie in after the steps before it, found
here by the Remez algorithm (`polar_express_coefficients`); Jordan's fixed quintic is kept for ablations. Muon
(llmpy.train.muon) orthogonalises its momentum with `orthogonalize`."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from llmpy.errors import LlmpyError

# Polar Express's design constants. The polynomials are optimal for normalised singular values in [LOWER, 1]: a
# matrix whose condition number times sqrt(rank) is below 1 / LOWER gets the band `polar_express_coefficients` implies.
POLAR_EXPRESS_LOWER = 1e-3
# The first steps would otherwise map [1e-3, 1] onto nearly [0, 2]: singular values in the middle of the interval
# would be crushed towards zero, where bf16 keeps few digits of them. Each step's polynomial is therefore designed
# for [max(l, CUSHION * u), u] and rescaled to centre its range over [l, u] on 1 (the paper's "cushioning").
POLAR_EXPRESS_CUSHION = 0.02407
# bf16 rounding can push a singular value slightly above the interval's top, where a quintic grows fast; every step
# but the last evaluates its polynomial at x / SAFETY so such values are not amplified step after step.
POLAR_EXPRESS_SAFETY = 1.01
# Jordan's fixed quintic (tuned for a steep slope at 0; its singular values end in roughly [0.7, 1.2]): for ablations.
JORDAN_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# The Frobenius norm bounds the spectral norm, so dividing by it puts every singular value in (0, 1]; the 1% margin
# and the eps keep bf16 rounding and an all-zero momentum (a skipped first step) inside [0, 1].
NORM_SAFETY, NORM_EPS = 1.01, 1e-7

Coefficients = tuple[tuple[float, float, float], ...]


def _quintic(coefficients: tuple[float, float, float], x):
    a, b, c = coefficients
    return a * x + b * x ** 3 + c * x ** 5


def _quintic_range(coefficients: tuple[float, float, float], lo: float, hi: float) -> tuple[float, float]:
    """min and max of the odd quintic over [lo, hi] (0 < lo): at the ends or where p' = a + 3b x^2 + 5c x^4 is 0."""
    a, b, c = coefficients
    roots = np.roots([5 * c, 3 * b, a]) if c != 0 else np.roots([3 * b, a])
    critical = [math.sqrt(r.real) for r in roots if abs(r.imag) < 1e-12 and lo ** 2 < r.real < hi ** 2]
    values = [_quintic(coefficients, x) for x in [lo, hi, *critical]]
    return min(values), max(values)


def _minimax_quintic(lo: float, hi: float) -> tuple[float, float, float]:
    """The odd quintic a x + b x^3 + c x^5 that minimises max |1 - p(x)| over [lo, hi], by the Remez exchange: the
    optimum's error equioscillates at 4 points (both ends and p's two critical points inside)."""
    if hi - lo < 1e-3 * hi:
        # an interval this narrow makes Remez's system singular; the optimum tends to the quintic that is flat to
        # second order at the middle m (p(m) = 1, p'(m) = p''(m) = 0), the classic Newton-Schulz one scaled to m
        m = (lo + hi) / 2
        return 15 / 8 / m, -10 / 8 / m ** 3, 3 / 8 / m ** 5
    ratio = lo / hi  # solve on [ratio, 1], then scale x back (the problem is scale-free)
    points = ratio + (1 - ratio) * (1 - np.cos(np.pi * np.arange(4) / 3)) / 2
    signs = (-1.0) ** np.arange(4)
    for _ in range(100):
        system = np.stack([points, points ** 3, points ** 5, signs], axis=1)
        a, b, c, _error = np.linalg.solve(system, np.ones(4))
        roots = np.roots([5 * c, 3 * b, a])
        inside = sorted(math.sqrt(r.real) for r in roots if abs(r.imag) < 1e-12 and ratio ** 2 < r.real < 1)
        if len(inside) != 2:
            raise LlmpyError(f"internal: Remez found {len(inside)} inner extrema on [{lo}, {hi}]")
        new_points = np.array([ratio, *inside, 1.0])
        converged = np.max(np.abs(new_points - points)) < 1e-15
        points = new_points
        if converged:
            break
    return a / hi, b / hi ** 3, c / hi ** 5


@functools.cache
def polar_express_coefficients(steps: int, lower: float = POLAR_EXPRESS_LOWER) -> Coefficients:
    """The (a, b, c) of each of `steps` Polar Express quintics for normalised singular values in [lower, 1].

    Greedy, as the paper proves optimal: step t's quintic is the minimax one for the interval [l, u] the singular
    values are in after the steps before it (cushioned and recentred, see POLAR_EXPRESS_CUSHION), then evaluated at
    x / SAFETY unless it is the last; the next interval is that polynomial's range over [l, u]. For [1e-3, 1] and
    5 steps every singular value ends in [0.867, 1.133] (Jordan's fixed quintic: [0.47, 1.20]); 6 steps: 1 +- 2e-3."""
    lo, hi = lower, 1.0
    coefficients = []
    for step in range(steps):
        a, b, c = _minimax_quintic(max(lo, POLAR_EXPRESS_CUSHION * hi), hi)
        bottom, top = _quintic_range((a, b, c), lo, hi)
        scale = 2 / (bottom + top)  # centre the range over the whole [lo, hi] on 1
        a, b, c = a * scale, b * scale, c * scale
        if step < steps - 1:
            a, b, c = a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY ** 3, c / POLAR_EXPRESS_SAFETY ** 5
        coefficients.append((float(a), float(b), float(c)))
        lo, hi = _quintic_range((a, b, c), lo, hi)  # where the singular values are after this step
    return tuple(coefficients)


ORTHOGONALIZERS = {
    "polar_express": polar_express_coefficients,
    "jordan": lambda steps: (JORDAN_COEFFICIENTS,) * steps,
}


def orthogonalize(g: Tensor, steps: int = 5, dtype: torch.dtype | None = None,
                  method: str = "polar_express") -> Tensor:
    """An approximation of the orthogonal polar factor U V^T of g = U S V^T, for g (..., m, n), batched over the
    leading dims: `steps` quintic iterations of `method` (ORTHOGONALIZERS), computed in `dtype` (None: bf16 on CUDA,
    fp32 elsewhere), returned in g's dtype. Each singular value s becomes p_T(...p_1(s / (1.01 |g|_F))...)."""
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix (..., m, n), got shape {tuple(g.shape)}")
    if method not in ORTHOGONALIZERS:
        raise ValueError(f"orthogonalize: method must be one of {', '.join(ORTHOGONALIZERS)}, got {method!r}")
    if dtype is None:
        dtype = torch.bfloat16 if g.device.type == "cuda" else torch.float32
    shape = g.shape
    x = g.reshape(-1, *shape[-2:])  # (batch, m, n)
    wide = shape[-2] <= shape[-1]
    if not wide:
        x = x.mT  # iterate on (batch, n, m): A = X X^T is then the smaller of the two Gram matrices
    # the norm accumulated in fp32 at least (a bf16 norm is itself 0.4% off)
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    x = (x / (norm * NORM_SAFETY + NORM_EPS)).to(dtype)
    for a, b, c in ORTHOGONALIZERS[method](steps):
        gram = x @ x.mT  # (batch, m, m)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    if not wide:
        x = x.mT
    return x.reshape(shape).to(g.dtype)
