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

The float32 GELU has a faster path of its own (`_gelu_float32`, below): fewer operations, no
boolean-mask indexing, float64 temporaries only the size of a cache-resident block. It is still
within 1 ulp of the float64 value. The forward's GELU (`gelu_fast`) is faster still: float32
throughout, within 4 ulp of its input, its rational evaluated as a continued fraction (`j_fraction`).
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


def _horner(a, coefs, out=None):
    """The polynomial with `coefs` (highest power first) at a; into `out` (in place) if given."""
    out = np.multiply(a, coefs[0], out=out)
    out += coefs[1]
    for c in coefs[2:]:
        out *= a
        out += c
    return out


# Cody's coefficient tuples are kept in CALERF's order; the highest power of each numerator is its
# last coefficient, and each denominator is monic.
def _erf_small(x):
    """erf(x) for |x| <= 0.46875."""
    z = x * x
    return x * _horner(z, (_A[4], *_A[:4])) / _horner(z, (1.0, *_B))


def _exp_minus_square(y):
    """exp(-y*y) without the rounding error of forming y*y."""
    s = np.floor(y * 16.0) / 16.0
    return np.exp(-s * s) * np.exp(-(y - s) * (y + s))


def _erfc_mid(y):
    """erfc(y) for 0.46875 < y <= 4."""
    return _exp_minus_square(y) * _horner(y, (_C[8], *_C[:8])) / _horner(y, (1.0, *_D))


def _erfc_large(y):
    """erfc(y) for y > 4."""
    z = 1.0 / (y * y)
    r = z * _horner(z, (_P[5], *_P[:5])) / _horner(z, (1.0, *_Q))
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


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact GELU, x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2)), in x's dtype (transformers' "gelu").

    Phi is taken through erfc rather than 1 + erf so that it keeps its relative precision for
    negative x, where 1 + erf(x) would cancel. The whole expression is evaluated in float64 and
    rounded once, so a float32 GELU is correctly rounded too (scaling x by 1/sqrt(2) in float32
    would already cost up to 2 y^2 * 6e-8 of relative error in erfc(y)). `out` (x's shape and
    dtype, may be x itself) receives the result.
    """
    x = np.asarray(x)
    if x.dtype == np.float32 and x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
        return _gelu_float32(x, np.empty_like(x) if out is None else out, _GELU_P, _GELU_Q)
    x64 = x.astype(np.float64, copy=False)
    y = (0.5 * x64 * erfc(x64 * -np.sqrt(0.5))).astype(x.dtype, copy=False)
    if out is None:
        return y
    out[...] = y
    return out


# -- the fast float32 GELU ---------------------------------------------------------------------
# With a = |x| and T(a) = Phi(-a) = 0.5 erfc(a / sqrt 2), the upper tail of the normal distribution:
#
#     GELU(x) = max(x, 0) - a T(a)        (x >= 0: x (1 - T);  x < 0: x T)
#
# which never cancels: T <= 1/2, so for x >= 0 the result is at least x / 2. T(a) = exp(-a^2/2) R(a)
# with R(a) = P(a) / Q(a), a degree 4/5 rational fitted (iteratively reweighted least squares, against
# mpmath) to a relative error below 7.1e-9 on [0, 16]; past a = 14.2 a float32 GELU of -a is 0 anyway.
# In float64, a^2 of a float32 is exact and exp is good to 1e-16, so before the one rounding to
# float32 the relative error is below 1e-8, 0.17 of the smallest float32 ulp: <= 0.67 ulp after it.
# tests/test_erf.py checks a dense grid; benchmarks/check_gelu.py checks every float32.
_GELU_P = (4.222032021589694e-3, 4.134108214741302e-2, 1.8532739321367483e-1, 4.411062939677191e-1,
           5.00000003531264e-1)  # highest power first
_GELU_Q = (1.0582966989617472e-2, 1.0363226429074025e-1, 4.749958517793812e-1, 1.2111731742912322,
           1.6800976455664558, 1.0)
_A_CAP = 40.0    # exp(-40^2 / 2) is 0 in float64; capping a keeps inf out of P / Q (GELU(+-inf) = inf, 0)
# Bytes per temporary: three of them and the block of x fit a 2 MB L2 cache (128K float32 elements).
# With two threads, every ufunc call's end may wait for the GIL, and such waits cost more than the
# pass itself, so fewer, longer calls scale better: two threads each on a 512 x 4096 float32 GELU take
# 0.80x one thread's time for both with four 64K-element temporaries, 0.59x with three of 128K
# (bge-large 8x128 forward: GELU 0.54 -> 0.45 s of thread time).
_BLOCK_BYTES = 512 << 10


def gelu_fast(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The exact GELU to within 4 ulp of |x| in float32 (the fast forward path's); `gelu` otherwise.

    An error of a few ulp of the input is what reaches the next matmul anyway: it is the size of the
    rounding of every other activation of the same magnitude, and far below the matmul's own error
    (whole forward, against the float64 oracle: bge-large size max 0.77 -> 0.74 and rms 0.62 -> 0.64
    of transformers' error, MiniLM unchanged). So it is computed in float32 throughout, half the
    work of float64 (8x128 bge-large forward: 3.47 s -> 3.23 s); `gelu` keeps 1 ulp of the result.
    """
    x = np.asarray(x)
    if x.dtype == np.float32 and x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
        return _gelu_fast_float32(x, np.empty_like(x) if out is None else out)
    return gelu(x, out)


# gelu_fast's T(a): P(a) / Q(a) a degree 3/3 rational fitted (Lawson-reweighted least squares, against
# scipy's erfcx) to an ABSOLUTE error |exp(-a^2/2) P/Q - T(a)| below 9.5e-9 for every a >= 0 (it
# peaks at a = 2.16), evaluated in float32 (as the J-fraction below): each operation's rounding adds
# a few ulp of T, and GELU(x) = relu(x) - a T(a) turns that into error in ulps of a, worst where a T(a)
# is a large share of x (2.32 ulp of |x| at x = 0.249, the worst of every float32 with 2^-20 <= |x| < 16;
# 1.19 below, 0 above; Horner's P and Q gave 2.92 at x = 0.0624; benchmarks/check_gelu.py --fast,
# which checks them against GELU_FAST_ULPS).
_GELU_X_P = tuple(np.float32(c) for c in (-1.473574178930788e-4, 3.473439989887314e-2, 1.8446958754615295e-1,
                                          5.000000094184717e-1))
_GELU_X_Q = tuple(np.float32(c) for c in (8.165012656487305e-2, 5.004399840393102e-1, 1.1668253119265057, 1.0))
_GELU_X_CAP = np.float32(16.0)  # exp(-a^2/2) is 0 in float32 from a = 14.5; capping keeps inf out of R
GELU_FAST_ULPS = 4              # gelu_fast's bound, in ulps of |x| (measured 2.32 over every float32; a
                                # margin for NumPy's exp on other SIMD targets)


def j_fraction(P, Q):
    """P / Q (both of degree n, highest power first) as the continued fraction
    c0 + c1 / (a + c2 + c3 / (a + c4 + ... + c(2n-1) / (a + c(2n)))): the coefficients [c0, ..., c(2n)],
    in float64, by repeated polynomial division. Evaluated from the inside out it costs one divide
    and two adds per level, 3n passes over the array, where Horner's P and Q and their quotient cost 4n + 1."""
    P, Q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
    head = P[0] / Q[0]
    out, num, den = [head], Q, np.polysub(P, head * Q)[1:]  # P/Q = head + den/Q = head + 1 / (Q/den)
    while len(den):
        quotient, rest = np.polydiv(num, den)             # num / den = (q1 a + q0) + rest / den
        out += [1.0 / quotient[0], quotient[1] / quotient[0]]  # = (a + q0/q1 + (rest/q1)/den) * q1
        num, den = den, np.trim_zeros(rest / quotient[0], "f")  # the next level: den / (rest/q1)
    return out


# gelu_fast's R(a) = P/Q as a J-fraction: 9 passes instead of 13, and no pole on [0, cap]: each level's
# denominator is positive there (at least 0.075, 12.5 and 0.87, from the innermost out). Two threads
# each on a 512 x 4096 GELU at once (bge-large 8x128's FFN): 12% faster than Horner's P and Q.
_GELU_X_CF = tuple(np.float32(c) for c in j_fraction(_GELU_X_P, _GELU_X_Q))


def _gelu_fast_float32(x, out):
    """gelu_fast of a C-contiguous float32 array into `out` (may be x): in float32, with R(a) as the
    J-fraction _GELU_X_CF, evaluated from the innermost level out."""
    c = _GELU_X_CF

    def rational(a, r, _):
        np.add(a, c[-1], out=r)                           # the innermost level: a + c(2n)
        for k in range(len(c) - 2, 1, -2):                # each level out: a + c(k-1) + c(k) / r
            np.divide(c[k], r, out=r)
            r += a
            r += c[k - 1]
        np.divide(c[1], r, out=r)
        r += c[0]                                         # c0 + c1 / r
    return _gelu_blocks(x, out, np.float32, _GELU_X_CAP, rational)


def _gelu_float32(x, out, P, Q):
    """`gelu` of a C-contiguous float32 array into `out` (may be x): in float64, one rounding to
    float32 at the end, with R(a) = P(a) / Q(a) (coefficients highest power first)."""
    def rational(a, r, scratch):
        _horner(a, P, r)
        r /= _horner(a, Q, scratch)
    return _gelu_blocks(x, out, np.float64, _A_CAP, rational)


def _gelu_blocks(x, out, work, cap, rational):
    """GELU(x) = relu(x) - a T(a), T(a) = exp(-a^2/2) R(a), a = min(|x|, cap), into `out`, block by
    block in `work` precision, its three temporaries in a core's L2 cache. rational(a, r, scratch)
    writes R(a) into r (scratch: an array of a's size it may overwrite)."""
    xf, of = x.reshape(-1), out.reshape(-1)
    block = _BLOCK_BYTES // np.dtype(work).itemsize
    a, p, q = (np.empty(min(block, xf.size), work) for _ in range(3))
    for i in range(0, xf.size, block):
        xb = xf[i:i + block]
        n = xb.size
        ab, pb, qb = a[:n], p[:n], q[:n]
        np.abs(xb, out=ab)                                # a = |x|
        np.minimum(ab, cap, out=ab)                       # (nan stays nan)
        rational(ab, pb, qb)                              # R(a)
        np.multiply(ab, -0.5, out=qb)
        qb *= ab
        np.exp(qb, out=qb)                                # exp(-a^2 / 2); in float64, a^2 is exact
        pb *= qb
        pb *= ab                                          # a T(a)
        np.maximum(xb, 0.0, out=qb)                       # relu(x)
        np.subtract(qb, pb, out=of[i:i + n], casting="same_kind")  # from float64, the one rounding to float32
    return out
