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

    print("\nPyTorch- and TensorFlow-compatible functions (float64, fresh random inputs):")
    x = rng.normal(scale=2.0, size=(6, 4))
    y = rng.integers(0, 4, size=6)
    y[1] = -100
    w = rng.uniform(0.5, 2.0, size=4)
    p = rng.uniform(0.05, 0.95, size=(6, 4))
    q = rng.uniform(size=(6, 4))
    lp = x - x.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    keep = y != -100
    picked = lp[np.arange(6), np.where(keep, y, 0)]
    softplus = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)  # log(1 + exp(-x))
    cases = [
        ("cross_entropy (weight, ignore_index)",
         lambda a: xentkit.cross_entropy(a, y, w, grad=True),
         lambda a: xentkit.cross_entropy(a, y, w),
         float(-(w[y[keep]] * picked[keep]).sum() / w[y[keep]].sum())),
        ("cross_entropy (probabilities, label_smoothing 0.1)",
         lambda a: xentkit.cross_entropy(a, q, label_smoothing=0.1, grad=True),
         lambda a: xentkit.cross_entropy(a, q, label_smoothing=0.1),
         float(-((0.9 * q + 0.025) * lp).sum() / 6)),
        ("nll_loss", lambda a: xentkit.nll_loss(a, y, reduction="sum", grad=True),
         lambda a: xentkit.nll_loss(a, y, reduction="sum"), float(-x[keep, y[keep]].sum())),
        ("binary_cross_entropy", lambda a: xentkit.binary_cross_entropy(a, q, grad=True),
         lambda a: xentkit.binary_cross_entropy(a, q),
         float(-(q * np.log(p) + (1 - q) * np.log1p(-p)).mean()), p),
        ("binary_cross_entropy_with_logits (pos_weight)",
         lambda a: xentkit.binary_cross_entropy_with_logits(a, q, pos_weight=w, grad=True),
         lambda a: xentkit.binary_cross_entropy_with_logits(a, q, pos_weight=w),
         float(((1 - q) * x + (1 + (w - 1) * q) * softplus).mean())),
        ("sparse_softmax_cross_entropy_with_logits",
         lambda a: _summed(xentkit.sparse_softmax_cross_entropy_with_logits(np.abs(y) % 4, a,
                                                                            grad=True)),
         lambda a: float(xentkit.sparse_softmax_cross_entropy_with_logits(np.abs(y) % 4, a).sum()),
         float(-lp[np.arange(6), np.abs(y) % 4].sum())),
        ("softmax_cross_entropy_with_logits (rows not summing to 1)",
         lambda a: _summed(xentkit.softmax_cross_entropy_with_logits(q, a, grad=True)),
         lambda a: float(xentkit.softmax_cross_entropy_with_logits(q, a).sum()),
         float(-(q * lp).sum())),
        ("sigmoid_cross_entropy_with_logits",
         lambda a: _summed(xentkit.sigmoid_cross_entropy_with_logits(q, a, grad=True)),
         lambda a: float(xentkit.sigmoid_cross_entropy_with_logits(q, a).sum()),
         float((np.maximum(x, 0) - x * q + np.log1p(np.exp(-np.abs(x)))).sum())),
    ]
    for case in cases:
        name, with_grad, value, ref = case[:4]
        a = (case[4] if len(case) > 4 else x).copy()
        loss, g = with_grad(a)
        print(f"  {name}\n    loss = {loss:.10f}   (NumPy formula: {ref:.10f})")
        ok &= abs(loss - ref) < 1e-12 * max(1.0, abs(ref))
        ok &= grad_check("  grad", value, a, g)
    lsm = xentkit.log_softmax(x, dim=1)
    print(f"  log_softmax: max |xentkit - NumPy| = {np.abs(lsm - lp).max():.2e}")
    ok &= bool(np.abs(lsm - lp).max() < 1e-12)

    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


def _summed(result):
    """(loss array, grad) -> (sum of the losses, grad): the gradient is that of the sum."""
    loss, grad = result
    return float(loss.sum()), grad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xentkit", description="Cross-entropy losses.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--cmake-dir", action="store_true",
                        help="print the directory of the C++ SDK's xentkitConfig.cmake and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="run every loss on a small built-in example, with gradient checks")
    from ._eval import add_parser as _add_eval_parser

    _add_eval_parser(sub)
    sub.add_parser("bench", add_help=False,
                   help="time xentkit against PyTorch and a NumPy copy (xentkit bench --help)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ._bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.version:
        import xentkit

        print(xentkit.__version__)
        return 0
    if args.cmake_dir:
        import xentkit

        try:
            print(xentkit.cmake_dir())
        except FileNotFoundError as e:
            print(f"xentkit: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "eval":
        from ._eval import run as _run_eval

        return _run_eval(args)
    if args.command == "demo":
        return _demo()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
