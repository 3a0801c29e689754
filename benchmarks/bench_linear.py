"""The fused linear cross-entropy table of ``xentkit bench`` alone (float32, forward+backward and
scoring, against the matrix products alone, F.linear_cross_entropy, torch.compile and
xentkit.torch; peak memory of one call in a fresh process). One-thread figures:

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_linear.py

Options: --repeat N (median of N, default 5), --quick (a small shape), --no-memory, --json.
"""

import argparse
import json
import sys

from xentkit import _bench


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = _bench.run_linear(args.repeat, 1, args.quick, memory=not args.no_memory)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_bench._machine())
    print(_bench.format_table(rows, ["xk_ms", "gemm3_ms", "xk/gemm3", "score_ms", "gemm1_ms",
                                     "score/gemm1", "chunked/xk", "reference/xk", "compile/xk",
                                     "xt/xk", "peak/logits", "score peak/logits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
