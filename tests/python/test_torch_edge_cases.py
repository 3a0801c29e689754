"""Edge cases of the PyTorch/TF-compatible functions: wide rows, empty class axes, zero weight
sums, NaN behind zero weights, and the reduction argument."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xentkit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gap", [699.5, 705.0, 709.9, 800.0])
def test_label_far_below_max_in_a_wide_row(dtype, gap):
    """sum_other / e_label overflows long before -log p does: C = 50257 ones at 0, the label at
    -gap. The loss is gap + log(C - 1 + exp(-gap)), finite."""
    channels = 50257
    x = np.zeros((2, channels), dtype=dtype)
    x[0, 0] = -gap
    t = np.array([0, 3])
    expected0 = gap + math.log(channels - 1 + math.exp(-gap))
    expected1 = math.log(channels)  # the second row is all zeros
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    loss, grad = xentkit.cross_entropy(x, t, reduction="none", grad=True)
    np.testing.assert_allclose(loss, [expected0, expected1], rtol=rtol)
    assert grad[0, 0] == pytest.approx(-1.0, rel=rtol)
    sparse = xentkit.sparse_softmax_cross_entropy_with_logits(t, x)
    np.testing.assert_allclose(sparse, [expected0, expected1], rtol=rtol)
    smoothed = xentkit.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    assert np.all(np.isfinite(smoothed))


def test_label_far_below_max_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.zeros((2, 50257))
    x[0, 0] = -699.5
    t = np.array([0, 0])
    expected = F.cross_entropy(torch.tensor(x), torch.tensor(t), reduction="none").numpy()
    np.testing.assert_allclose(xentkit.cross_entropy(x, t, reduction="none"), expected,
                               rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_probability_targets_without_classes_raise(label_smoothing, reduction):
    """Positions to score over a class axis of length 0 raise ValueError (SPEC 1.5), where
    PyTorch returns NaN for the mean (numel / C = 0 / 0) and 0 for the sum: a row without
    classes has no softmax, so no loss. Without positions the input is simply empty."""
    x = np.zeros((3, 0, 2))
    with pytest.raises(ValueError, match="0 classes with 6 position"):
        xentkit.cross_entropy(x, x.copy(), label_smoothing=label_smoothing, reduction=reduction)
    empty = np.zeros((0, 0, 2))
    out = xentkit.cross_entropy(empty, empty.copy(), label_smoothing=label_smoothing,
                                reduction=reduction)
    if reduction == "none":
        assert out.shape == (0, 2)
    else:
        assert (math.isnan(out) if reduction == "mean" else out == 0.0), out


@pytest.mark.parametrize("function", [xentkit.cross_entropy, xentkit.nll_loss])
def test_weighted_mean_over_zero_weight_sum(function):
    """sum / sum(w[target]) as PyTorch divides: +-inf for a nonzero sum, NaN for 0 / 0."""
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([0, 1])
    total = function(x, t, np.array([1.0, -1.0]), reduction="sum")
    mean = function(x, t, np.array([1.0, -1.0]))
    assert total != 0.0 and math.isinf(mean) and math.copysign(1.0, mean) == np.sign(total)
    assert math.isnan(function(x, t, np.array([0.0, 0.0])))


def test_weighted_mean_over_zero_weight_sum_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([0, 1])
    w = np.array([1.0, -1.0])
    for ours, theirs in ((xentkit.cross_entropy, F.cross_entropy), (xentkit.nll_loss, F.nll_loss)):
        expected = float(theirs(torch.tensor(x), torch.tensor(t), torch.tensor(w)))
        assert ours(x, t, w) == expected


def test_nan_logit_behind_a_zero_weight_is_not_hidden():
    """A zero weight removes an infinite term (the limit) but never a NaN."""
    x = np.array([[np.nan, 1.0], [0.5, 1.0]])
    t = np.array([0, 1])
    w = np.array([0.0, 1.0])
    assert math.isnan(xentkit.cross_entropy(x, t, w, reduction="sum"))
    assert math.isnan(xentkit.nll_loss(x, t, w, reduction="sum"))
    assert math.isnan(xentkit.binary_cross_entropy_with_logits(
        np.array([np.nan, 1.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), reduction="sum"))
    # ... while a zero weight at an infinite logit contributes 0.
    y = np.array([[-np.inf, 1.0], [0.5, 1.0]])
    assert math.isfinite(xentkit.cross_entropy(y, t, w, reduction="sum"))
    assert xentkit.binary_cross_entropy_with_logits(
        np.array([np.inf, 1.0]), np.array([0.0, 0.0]), np.array([0.0, 1.0]),
        reduction="sum") == pytest.approx(math.log1p(math.e))


@pytest.mark.parametrize("reduction", [None, 1, b"mean", "Mean", "avg"])
@pytest.mark.parametrize("function", [
    lambda r: xentkit.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction=r),
    lambda r: xentkit.nll_loss(np.zeros((2, 3)), np.array([0, 1]), reduction=r),
    lambda r: xentkit.binary_cross_entropy(np.full(2, 0.5), np.full(2, 0.5), reduction=r),
    lambda r: xentkit.binary_cross_entropy_with_logits(np.zeros(2), np.zeros(2), reduction=r),
], ids=["cross_entropy", "nll_loss", "bce", "bce_logits"])
def test_unknown_reduction_is_a_value_error(function, reduction):
    with pytest.raises(ValueError, match="reduction"):
        function(reduction)
