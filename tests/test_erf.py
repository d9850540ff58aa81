"""erf against math.erf on a dense grid; GELU against torch's exact GELU."""
import math

import numpy as np
import pytest

from bge_ref import erf as erf_module
from bge_ref.erf import GELU_FAST_ULPS, erf, erfc, gelu, gelu_fast, j_fraction


def _grid():
    lin = np.linspace(-8, 8, 400_001)
    logs = np.geomspace(1e-300, 8, 40_001)
    return np.concatenate([lin, logs, -logs, [0.0, 0.46875, 4.0, -0.46875, -4.0]])


@pytest.mark.quick  # needs no torch
def test_erf_float64_relative_error():
    x = _grid()
    ref = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert got.dtype == np.float64
    nz = ref != 0
    rel = np.abs(got[nz] - ref[nz]) / np.abs(ref[nz])
    print(f"erf float64 max relative error vs math.erf: {rel.max():.3e}")
    assert rel.max() <= 1e-14
    assert np.all(got[~nz] == 0)


@pytest.mark.quick  # needs no torch
def test_erf_float32_within_2_ulp_of_correct_rounding():
    x = _grid().astype(np.float32)
    correct = np.array([math.erf(float(v)) for v in x]).astype(np.float32)  # float64 erf rounded once
    got = erf(x)
    assert got.dtype == np.float32
    ulps = np.abs(got.astype(np.float64) - correct) / np.spacing(np.abs(correct)).astype(np.float64)
    print(f"erf float32 max error: {ulps.max():.1f} ulp")
    assert ulps.max() <= 2


@pytest.mark.quick  # needs no torch
def test_erfc_float64_relative_error():
    x = np.linspace(-26, 26.5, 200_001)
    ref = np.array([math.erfc(v) for v in x])
    rel = np.abs(erfc(x) - ref) / ref
    print(f"erfc float64 max relative error vs math.erfc: {rel.max():.3e}")
    assert rel.max() <= 1e-13  # erfc spans 2 .. 1e-300: a relative bound over all of it
    assert erfc(np.array([30.0]))[0] == 0 and erfc(np.array([-30.0]))[0] == 2


@pytest.mark.quick  # needs no torch
def test_erf_special_values():
    got = erf(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-320, 30.0, -30.0]))
    assert np.isnan(got[0])
    assert list(got[1:3]) == [1.0, -1.0]
    assert got[3] == 0 and np.signbit(got[4])
    assert got[5] == 2 / math.sqrt(math.pi) * 1e-320
    assert list(got[6:]) == [1.0, -1.0]


def test_gelu_matches_torch_exact_gelu_not_tanh():
    import torch
    x = np.linspace(-10, 10, 100_001)
    ours = gelu(x)
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    tanh = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    # torch forms 1 + erf(x / sqrt 2), which cancels for x < -5 (its values there are multiples of
    # 1e-16 or 0); ours goes through erfc. So: equal to rounding, up to torch's cancellation.
    np.testing.assert_allclose(ours, ref, rtol=1e-14, atol=3e-16)
    assert np.abs(ours - tanh).max() > 1e-4  # the two GELUs differ: we compute the erf one
    x32 = x.astype(np.float32)
    assert gelu(x32).dtype == np.float32
    exact = gelu(x32.astype(np.float64))
    err = np.abs(gelu(x32) - exact)
    ulps = err / np.spacing(np.abs(exact).astype(np.float32))
    print(f"gelu float32 max error: {ulps.max():.2f} ulp")
    assert ulps.max() <= 1  # evaluated in float64, rounded once


@pytest.mark.quick  # needs no torch
def test_gelu_float32_fast_path_on_a_dense_float32_sample():
    """Every 61st float32 bit pattern with |x| in [2^-30, 64), plus specials: within 1 ulp of float64."""
    bits = np.arange(np.float32(2.0**-30).view(np.int32), np.float32(64.0).view(np.int32), 61, dtype=np.int32)
    pos = bits.view(np.float32)
    x = np.concatenate([pos, -pos, np.float32([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38])]).astype(np.float32)
    exact = gelu(x.astype(np.float64))
    got = gelu(x)
    ulps = np.abs(got - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    print(f"gelu float32 fast path: max {ulps.max():.3f} ulp over {x.size} values")
    assert ulps.max() <= 1
    out = gelu(np.float32([np.inf, -np.inf, np.nan]))
    assert out[0] == np.inf and out[1] == 0 and np.isnan(out[2])


@pytest.mark.quick  # needs no torch
def test_gelu_fast_within_its_ulps_of_x_on_a_dense_float32_sample():
    """The fast path's float32 GELU: |error| <= GELU_FAST_ULPS ulp of |x|, every 61st float32 with
    |x| in [2^-30, 64) and specials; float64 input is the exact gelu."""
    bits = np.arange(np.float32(2.0**-30).view(np.int32), np.float32(64.0).view(np.int32), 61, dtype=np.int32)
    pos = bits.view(np.float32)
    x = np.concatenate([pos, -pos, np.float32([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38])]).astype(np.float32)
    exact = gelu(x.astype(np.float64))
    got = gelu_fast(x)
    assert got.dtype == np.float32
    ulps = np.abs(got - exact) / np.spacing(np.abs(x)).astype(np.float64)
    print(f"gelu_fast float32: max {ulps.max():.3f} ulp of |x| over {x.size} values")
    assert ulps.max() <= GELU_FAST_ULPS
    assert np.abs(gelu_fast(x) - gelu(x)).max() > 0     # a different function from gelu's
    out = gelu_fast(np.float32([np.inf, -np.inf, np.nan]))
    assert out[0] == np.inf and out[1] == 0 and np.isnan(out[2])
    x64 = np.linspace(-10, 10, 1001)
    np.testing.assert_array_equal(gelu_fast(x64), gelu(x64))
    buf = x[:1000].copy()
    assert gelu_fast(buf, out=buf) is buf and np.array_equal(buf, got[:1000])  # in place


@pytest.mark.quick  # needs no torch
def test_j_fraction_is_the_rational_it_replaces():
    """gelu_fast evaluates its fitted P/Q as a continued fraction: the same function in float64 (to
    rounding) on [0, cap], with every level's denominator away from zero there (no pole); and the
    conversion is general: a random 2/2 rational too."""
    a = np.linspace(0, float(erf_module._GELU_X_CAP), 160_001)
    P, Q = erf_module._GELU_X_P, erf_module._GELU_X_Q
    c = j_fraction(P, Q)
    assert len(c) == 7
    inner = a + c[6]
    middle = a + c[4] + c[5] / inner
    outer = a + c[2] + c[3] / middle
    assert min(inner.min(), middle.min(), outer.min()) > 0.05
    rational = np.polyval(np.float64(P), a) / np.polyval(np.float64(Q), a)
    np.testing.assert_allclose(c[0] + c[1] / outer, rational, rtol=1e-13, atol=0)
    p2, q2 = [2.0, 1.0, 0.5], [1.0, 3.0, 2.0]            # roots of Q at -1 and -2: none on [0, cap]
    c2 = j_fraction(p2, q2)
    assert len(c2) == 5
    np.testing.assert_allclose(c2[0] + c2[1] / (a + c2[2] + c2[3] / (a + c2[4])),
                               np.polyval(p2, a) / np.polyval(q2, a), rtol=1e-12)
