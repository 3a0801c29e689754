"""Paths of the vectorised kernels that depend on sizes and scales: integer labels validated in
blocks of 1024 (the first bad label is still the one reported), the gradient scale of the sigmoid
kernel when it is not a float32 value, and float16 softmax rows whose batch is widened once into
float32 scratch (C up to 256 in batches of 16, up to 1024 in batches of 4) or widened twice."""

from __future__ import annotations

import numpy as np
import pytest

import references as caffe_ref
import ref_softmax_family as ref
import xentkit


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint64])
@pytest.mark.parametrize("bad_at", [0, 1023, 1024, 3000, 4095])
def test_first_bad_label_reported_across_blocks(dtype, bad_at):
    rng = np.random.default_rng()
    n, c = 4096, 7
    x = rng.standard_normal((n, c)).astype(np.float32)
    t = rng.integers(0, c, n).astype(dtype)
    t[bad_at] = 9
    if bad_at + 700 < n:
        t[bad_at + 700] = 11  # a later bad label, in the same or the next block
    with pytest.raises(xentkit.LabelError) as info:
        xentkit.cross_entropy(x, t)
    assert info.value.index == bad_at
    assert info.value.value == 9


def test_uint64_label_above_int64_rejected_in_a_full_block():
    n, c = 2048, 5
    x = np.zeros((n, c), np.float32)
    t = np.zeros(n, np.uint64)
    t[1500] = np.uint64(2**63 + 3)
    with pytest.raises(xentkit.LabelError) as info:
        xentkit.cross_entropy(x, t)
    assert info.value.index == 1500


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint16])
def test_ignored_labels_counted_in_full_blocks(dtype):
    rng = np.random.default_rng()
    n, c = 5000, 6
    x = rng.standard_normal((n, c)).astype(np.float32)
    t = rng.integers(0, c, n).astype(dtype)
    ignore = 3  # a real class, ignored
    keep = t != ignore
    loss = xentkit.cross_entropy(x, t, ignore_index=ignore)
    per, _ = ref.cross_entropy(x.astype(np.float64), t.astype(np.int64), ignore_index=ignore,
                               reduction="none")
    np.testing.assert_allclose(loss, per[keep].sum() / keep.sum(), rtol=1e-6)


def test_ignore_index_not_representable_in_label_type():
    # uint8 labels never equal -100; 156 (-100 wrapped to 8 bits) is out of range, not ignored.
    x = np.zeros((2048, 4), np.float32)
    t = np.full(2048, 1, np.uint8)
    t[2000] = 156
    with pytest.raises(xentkit.LabelError) as info:
        xentkit.cross_entropy(x, t, ignore_index=-100)
    assert info.value.index == 2000


@pytest.mark.parametrize("n", [16, 1000, 4099])
def test_sigmoid_gradient_scale_not_a_float(level, n):
    # mean over n elements: grad_scale 1/n is not a float32 value for these n.
    rng = np.random.default_rng()
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    t = rng.random(n).astype(np.float32)
    loss, grad = xentkit.binary_cross_entropy_with_logits(x, t, grad=True)
    want = (caffe_ref.stable_sigmoid(x) - t.astype(np.float64)) / n
    # within a few float32 roundings of the float64 formula, element by element
    np.testing.assert_allclose(grad, want, rtol=4e-7, atol=2e-7 * np.abs(want).max())
    per = caffe_ref.sigmoid_elementwise(x, t)
    np.testing.assert_allclose(loss, per.mean(), rtol=2e-6)
    _, grad2 = xentkit.binary_cross_entropy_with_logits(x, t, grad=True, reduction="sum")
    np.testing.assert_allclose(grad2, want * n, rtol=4e-7, atol=2e-7 * np.abs(want * n).max())


@pytest.mark.parametrize("shape", [(40, 17), (33, 256), (9, 257), (7, 1000), (5, 1024),
                                   (3, 1025), (2, 5000)])
@pytest.mark.parametrize("inplace", [False, True])
def test_half_rows_widened_once_or_twice(level, shape, inplace):
    rng = np.random.default_rng()
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(np.float16)
    t = rng.integers(0, c, n)
    x64 = x.astype(np.float64)
    want_loss, want_grad = ref.cross_entropy(x64, t)
    if inplace:
        buf = x.copy()
        loss, grad = xentkit.cross_entropy(buf, t, grad=buf)
        assert grad is buf
    else:
        loss, grad = xentkit.cross_entropy(x, t, grad=True)
    assert grad.dtype == np.float16
    np.testing.assert_allclose(float(loss), want_loss, rtol=2e-3)
    # float16 rounding of the gradient: half a float16 ulp plus the float32 work
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=1e-3,
                               atol=1e-3 * np.abs(want_grad).max())
