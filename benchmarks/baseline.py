"""Single-thread timing of the two Caffe layers against PyTorch (when installed) and a NumPy copy
of the same bytes, float32 4096 x 1000. Prints ns per element (median of 7 runs).

    python benchmarks/baseline.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import xentkit


def median_seconds(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    xentkit.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, c = 4096, 1000
    x = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, n)
    targets = rng.uniform(size=x.shape).astype(np.float32)
    out = np.empty_like(x)
    per = 1e9 / x.size
    rows = [
        ("numpy copyto (same bytes)", median_seconds(lambda: np.copyto(out, x))),
        ("xentkit softmax_with_loss, loss + diff",
         median_seconds(lambda: xentkit.softmax_with_loss(x, labels, diff=out))),
        ("xentkit sigmoid_cross_entropy_loss, loss + diff",
         median_seconds(lambda: xentkit.sigmoid_cross_entropy_loss(x, targets, diff=out))),
    ]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = torch.from_numpy(labels)
        tt = torch.from_numpy(targets)

        def ce():
            tx.grad = None
            torch.nn.functional.cross_entropy(tx, ty).backward()

        def bce():
            tx.grad = None
            torch.nn.functional.binary_cross_entropy_with_logits(tx, tt).backward()

        rows.append(("torch cross_entropy, forward + backward", median_seconds(ce)))
        rows.append(("torch bce_with_logits, forward + backward", median_seconds(bce)))
    for name, seconds in rows:
        print(f"{name:<50s} {seconds * per:8.2f} ns/element")


if __name__ == "__main__":
    main()
