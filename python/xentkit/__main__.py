"""The ``xentkit`` command line."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _demo() -> int:
    import xentkit

    print(f"xentkit {xentkit.__version__}  (CUDA built: {xentkit.cuda_built()}, "
          f"device usable: {xentkit.cuda_available()}, threads: {xentkit.get_num_threads()})")
    rng = np.random.default_rng(0)
    ok = True

    def grad_check(name, fn, x, analytic):
        # Central differences on a few coordinates, in float64.
        h = 1e-6
        worst = 0.0
        flat = x.reshape(-1)
        for k in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            old = flat[k]
            flat[k] = old + h
            up = fn(x)
            flat[k] = old - h
            down = fn(x)
            flat[k] = old
            numeric = (up - down) / (2 * h)
            worst = max(worst, abs(numeric - analytic.reshape(-1)[k]))
        passed = worst < 1e-6
        print(f"  {name}: max |analytic - finite difference| = {worst:.2e}  "
              f"[{'ok' if passed else 'FAILED'}]")
        return passed

    print("\nSigmoidCrossEntropyLoss: scores (4, 3), soft targets, normalization batch_size")
    x = rng.normal(size=(4, 3))
    t = rng.uniform(size=(4, 3))
    loss, diff = xentkit.sigmoid_cross_entropy_loss(x, t)
    ref = float(np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))) / 4)
    print(f"  loss = {loss:.10f}   (NumPy formula: {ref:.10f})")
    ok &= abs(loss - ref) < 1e-12
    ok &= grad_check("diff", lambda a: xentkit.sigmoid_cross_entropy_loss(a, t, diff=False)[0],
                     x, diff)

    print("\nSoftmaxWithLoss: scores (2, 5, 2, 2), labels (2, 2, 2), ignore_label 255, valid")
    s = rng.normal(scale=3.0, size=(2, 5, 2, 2))
    labels = rng.integers(0, 5, size=(2, 2, 2)).astype(np.int32)
    labels[0, 0, 0] = 255
    loss, diff, prob = xentkit.softmax_with_loss(s, labels, ignore_label=255, prob=True)
    z = s - s.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    ref = float(-(picked * valid).sum() / valid.sum())
    print(f"  loss = {loss:.10f}   (NumPy formula: {ref:.10f}; {valid.sum()} valid positions)")
    print(f"  prob sums over the class axis: min {prob.sum(axis=1).min():.12f}, "
          f"max {prob.sum(axis=1).max():.12f}")
    ok &= abs(loss - ref) < 1e-12
    ok &= grad_check("diff", lambda a: xentkit.softmax_with_loss(
        a, labels, ignore_label=255, diff=False)[0], s, diff)

    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xentkit", description="Cross-entropy losses.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="run every loss on a small built-in example, with gradient checks")
    args = parser.parse_args(argv)
    if args.version:
        import xentkit

        print(xentkit.__version__)
        return 0
    if args.command == "demo":
        return _demo()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
