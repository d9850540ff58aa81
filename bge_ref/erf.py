"""erf for NumPy arrays, accurate to float64 precision, and the exact GELU built on it.

NumPy has no erf ufunc, and the tanh GELU ("gelu_new") is a different function from the erf
GELU that BERT was trained with. So erf is computed here with W. J. Cody's rational Chebyshev
approximations (Math. Comp. 23, 1969; the CALERF routine of SPECFUN), which are accurate to
about 1e-18 on each of their three intervals, below float64's own rounding:

    |x| <= 0.46875      erf(x)  = x * A(x^2) / B(x^2)
    0.46875 < |x| <= 4  erfc(x) = exp(-x^2) * C(x) / D(x)
    |x| > 4             erfc(x) = exp(-x^2) / x * (1/sqrt(pi) + P(1/x^2) / Q(1/x^2) / x^2)

exp(-x^2) is taken as exp(-s^2) * exp(-(x-s)(x+s)) with s = x rounded down to 1/16, so the
large exponent is exact and no precision is lost to the rounding of x^2.

float32 input is evaluated in float64 and rounded once, so its error is one rounding (<= 0.5 ulp
plus 1e-16 relative): correctly rounded except in the rarest ties. tests/test_erf.py checks both.
"""
from __future__ import annotations

import numpy as np

_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_SQRPI = 5.6418958354775628695e-1  # 1 / sqrt(pi)
_THRESH = 0.46875
_XBIG = 26.543  # erfc(x) underflows to 0.0 in float64 beyond this


def _erf_small(x):
    """erf(x) for |x| <= 0.46875."""
    z = x * x
    num, den = _A[4] * z, z
    for a, b in zip(_A[:3], _B[:3]):
        num, den = (num + a) * z, (den + b) * z
    return x * (num + _A[3]) / (den + _B[3])


def _exp_minus_square(y):
    """exp(-y*y) without the rounding error of forming y*y."""
    s = np.floor(y * 16.0) / 16.0
    return np.exp(-s * s) * np.exp(-(y - s) * (y + s))


def _erfc_mid(y):
    """erfc(y) for 0.46875 < y <= 4."""
    num, den = _C[8] * y, y
    for c, d in zip(_C[:7], _D[:7]):
        num, den = (num + c) * y, (den + d) * y
    return _exp_minus_square(y) * (num + _C[7]) / (den + _D[7])


def _erfc_large(y):
    """erfc(y) for y > 4."""
    z = 1.0 / (y * y)
    num, den = _P[5] * z, z
    for p, q in zip(_P[:4], _Q[:4]):
        num, den = (num + p) * z, (den + q) * z
    r = z * (num + _P[4]) / (den + _Q[4])
    return _exp_minus_square(y) * (_SQRPI - r) / y


def _erfc_positive(y):
    """erfc(y) for y > 0.46875; 0 beyond 26.543, where float64 erfc underflows (Cody's XBIG)."""
    out = np.zeros_like(y)
    mid, large = y <= 4.0, (y > 4.0) & (y < _XBIG)
    out[mid] = _erfc_mid(y[mid])
    out[large] = _erfc_large(y[large])
    return out


def _evaluate(x, small_fn, big_fn):
    """Shared region split: small_fn(x) on |x| <= 0.46875, big_fn(x, erfc(|x|)) elsewhere."""
    x = np.asarray(x)
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    x = x.astype(np.float64, copy=False)
    out = np.empty_like(x)
    small = np.abs(x) <= _THRESH
    out[small] = small_fn(x[small])
    big = ~small & ~np.isnan(x)
    xb = x[big]
    out[big] = big_fn(xb, _erfc_positive(np.abs(xb)))
    out[np.isnan(x)] = np.nan
    return out.astype(out_dtype, copy=False)


def erf(x) -> np.ndarray:
    """Error function, elementwise; float32 in gives float32 out, anything else float64."""
    # erf = 1 - erfc, written (0.5 - erfc) + 0.5 as CALERF does to keep the last bit.
    return _evaluate(x, _erf_small, lambda x, c: np.copysign((0.5 - c) + 0.5, x))


def erfc(x) -> np.ndarray:
    """Complementary error function 1 - erf(x), without the cancellation of computing it so."""
    return _evaluate(x, lambda x: 1.0 - _erf_small(x), lambda x, c: np.where(x < 0, 2.0 - c, c))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2)), in x's dtype (transformers' "gelu").

    Phi is taken through erfc rather than 1 + erf so that it keeps its relative precision for
    negative x, where 1 + erf(x) would cancel. The whole expression is evaluated in float64 and
    rounded once, so a float32 GELU is correctly rounded too (scaling x by 1/sqrt(2) in float32
    would already cost up to 2 y^2 * 6e-8 of relative error in erfc(y)).
    """
    x64 = x.astype(np.float64, copy=False)
    return (0.5 * x64 * erfc(x64 * -np.sqrt(0.5))).astype(x.dtype, copy=False)
