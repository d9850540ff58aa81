"""Check a float32 GELU against the float64 one on every float32 in a range (default: every x with
2^-20 <= |x| < 16, about 4e8 values; below, GELU(x) is x/2 to float32 precision, above it is x or 0).

    python benchmarks/check_gelu.py [--lo 2**-20] [--hi 16]           # erf.gelu: error in ulps of the result
    python benchmarks/check_gelu.py --fast [--lo 2**-20] [--hi 16]    # erf.gelu_fast: error in ulps of |x|

Prints the largest error; the contracts are 1 ulp of the result (gelu) and erf.GELU_FAST_ULPS ulp
of |x| (gelu_fast); exit status 1 if one is exceeded.
"""
import argparse
import sys

import numpy as np

from bge_ref.erf import GELU_FAST_ULPS, gelu, gelu_fast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lo", type=eval, default=2.0 ** -20)
    ap.add_argument("--hi", type=eval, default=16.0)
    ap.add_argument("--fast", action="store_true", help="check gelu_fast, whose contract is GELU_FAST_ULPS ulp of |x|")
    args = ap.parse_args()
    fn, unit = (gelu_fast, "ulp of |x|") if args.fast else (gelu, "ulp of the result")
    lo, hi = np.float32(args.lo).view(np.int32), np.float32(args.hi).view(np.int32)
    worst, at, count = 0.0, None, 0
    for start in range(int(lo), int(hi), 1 << 22):
        pos = np.arange(start, min(start + (1 << 22), int(hi)), dtype=np.int32).view(np.float32)
        for x in (pos, -pos):
            exact = gelu(x.astype(np.float64))
            scale = np.abs(x) if args.fast else np.abs(exact).astype(np.float32)
            ulps = np.abs(fn(x) - exact) / np.spacing(scale).astype(np.float64)
            i = int(np.argmax(ulps))
            if ulps[i] > worst:
                worst, at = float(ulps[i]), float(x[i])
            count += x.size
    print(f"{fn.__name__} over {count:,} float32 values with {args.lo:g} <= |x| < {args.hi:g}: "
          f"max error {worst:.4f} {unit} (at x = {at!r})")
    return 0 if worst <= (GELU_FAST_ULPS if args.fast else 1) else 1


if __name__ == "__main__":
    sys.exit(main())
