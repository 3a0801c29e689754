"""Scale: an input of more than 2**31 elements gives the right result (64-bit sizes, offsets and
counts everywhere).

The scores are float32 of shape (N, 16) with N * 16 = 2**31 + 16 * EXTRA_ROWS, about 8.6 GiB, with
uint8 labels; the calls allocate nothing of the input's size (no gradient, per-row losses only).
Rows past the element offset 2**31 carry a pattern of their own (the label's logit is raised by
12), so an offset that wrapped at 32 bits would read other rows and change the per-row losses. The
expected values come from a float64 NumPy reference of the generating formula (the losses of the
97 distinct rows, by label and boost), compared in row chunks. Peak memory: about 9.5 GiB.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import xentkit

C = 16
BOUNDARY_ROW = 2**31 // C          # the first row whose elements lie past offset 2**31
EXTRA_ROWS = 4099
N = BOUNDARY_ROW + EXTRA_ROWS      # N * C = 2**31 + 65584 elements
CHUNK = 2**21                      # rows per chunk of the fill and of the reference
BOOST = 12.0


PERIOD = 97  # the logit pattern repeats every 97 rows (2**27 is not a multiple of 97)


def _pattern():
    """The 97 distinct rows of logits (multiples of 1/16 in [-3, 3), exact in float32)."""
    r = np.arange(PERIOD)[:, None]
    return (((r * 7 + np.arange(C) * 13) % PERIOD).astype(np.float32) * np.float32(1 / 16)
            - np.float32(3))


def _labels(a, b):
    r = np.arange(a, b, dtype=np.int64)
    return ((r * 5 + r // PERIOD) % C).astype(np.uint8)


def _loss_table():
    """-log softmax(row)[label] in float64 for every pattern row, label and boost:
    table[pattern, label, boosted]."""
    base = _pattern().astype(np.float64)
    table = np.empty((PERIOD, C, 2))
    for boosted in (0, 1):
        for label in range(C):
            x = base.copy()
            x[:, label] += BOOST * boosted
            m = x.max(axis=1)
            lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
            table[:, label, boosted] = lse - x[:, label]
    return table


def _expected(a, b, y, table):
    """The reference losses of rows [a, b), from the formula (not from the array in memory)."""
    r = np.arange(a, b, dtype=np.int64)
    return table[r % PERIOD, y, (r >= BOUNDARY_ROW).astype(np.int64)]


@pytest.fixture(scope="module")
def big():
    if N * C <= 2**31:
        raise AssertionError("the scale input must exceed 2**31 elements")
    x = np.empty((N, C), dtype=np.float32)
    y = np.empty(N, dtype=np.uint8)
    base = _pattern()
    for a in range(0, N, CHUNK):
        b = min(N, a + CHUNK)
        y[a:b] = _labels(a, b)
        np.take(base, np.arange(a, b) % PERIOD, axis=0, out=x[a:b])
        past = np.arange(max(a, BOUNDARY_ROW), b)
        if past.size:
            x[past, y[past]] += np.float32(BOOST)  # rows past offset 2**31: the label raised
    yield x, y
    del x, y


@pytest.mark.slow
def test_more_than_2_31_elements(big):
    x, y = big
    assert x.size > 2**31
    losses = xentkit.cross_entropy(x, y, reduction="none")
    assert losses.shape == (N,) and losses.dtype == np.float32
    caffe_loss, caffe_diff = xentkit.softmax_with_loss(x, y, diff=False)
    assert caffe_diff is None

    table = _loss_table()
    partial_sums = []
    worst = 0.0
    for a in range(0, N, CHUNK):
        b = min(N, a + CHUNK)
        expected = _expected(a, b, y[a:b], table)
        np.testing.assert_allclose(losses[a:b], expected, rtol=2e-6, atol=2e-6,
                                   err_msg=f"rows {a}..{b}")
        worst = max(worst, float(np.max(np.abs(losses[a:b] - expected))))
        partial_sums.append(math.fsum(expected))
    total = math.fsum(partial_sums)

    # The rows past the boundary are the boosted ones (a wrapped offset would not see the boost).
    tail = losses[BOUNDARY_ROW:]
    head = losses[BOUNDARY_ROW - EXTRA_ROWS:BOUNDARY_ROW]
    assert tail.max() < 0.1 < head.min()
    assert caffe_loss == pytest.approx(total / N, rel=1e-6)
    print(f"\nscale: {x.size} elements ({x.nbytes / 2**30:.2f} GiB); mean {caffe_loss:.9e}, "
          f"reference {total / N:.9e}; worst per-row error {worst:.2e}")
