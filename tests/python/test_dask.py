"""xentkit.dask: losses over dask arrays chunked along axis 0 equal one eager call on the whole
arrays and the float64 references, on the local schedulers and on a dask.distributed cluster."""

from __future__ import annotations

import math

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import xentkit  # noqa: E402
import xentkit.dask as xd  # noqa: E402

import ref_binary_tf as rb  # noqa: E402
import ref_softmax_family as rs  # noqa: E402
from test_eval import CASES, eager  # noqa: E402


def _tol(arrays):
    dt = np.result_type(*[v for v in arrays.values() if v.dtype.kind == "f"])
    return {np.float16: 1e-3, np.float32: 2e-6}.get(dt.type, 1e-12)


def _lazy(loss, arrays, options, chunks):
    a, b = arrays.values()
    a_d = da.from_array(a, chunks=(chunks,) + a.shape[1:])
    # The second array comes in other blocks: it is rechunked to the first one's rows.
    b_d = da.from_array(b, chunks=max(1, chunks + 2)) if b.ndim else b
    kwargs = dict(options)
    fn = getattr(xd, loss)
    if loss.endswith("_with_logits") and loss != "binary_cross_entropy_with_logits":
        return fn(b_d, a_d, **kwargs).mean()
    return fn(a_d, b_d, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunks", [1, 5, 23])
def test_dask_equals_one_call(case, chunks):
    _, loss, arrays, options, reference = case
    result = _lazy(loss, arrays, options, chunks)
    assert isinstance(result, da.Array) and result.shape == ()
    value = float(result.compute(scheduler="threads"))
    a, b = arrays.values()
    whole = float(eager(loss, a, b, **options))
    assert value == pytest.approx(whole, rel=_tol(arrays), abs=1e-30)
    assert value == pytest.approx(float(reference(a, b)), rel=10 * _tol(arrays))


def test_dask_graph_has_one_task_per_block():
    rng = np.random.default_rng(0)
    x = da.from_array(rng.normal(size=(40, 6)), chunks=(10, 3))  # columns are merged
    y = da.from_array(rng.integers(0, 6, size=40), chunks=7)
    result = xd.cross_entropy(x, y)
    assert result.shape == () and result.dtype == np.float64
    value = result.compute(scheduler="sync")
    assert value == pytest.approx(xentkit.cross_entropy(x.compute(), y.compute()), rel=1e-12)
    # Four row blocks: the partials are computed per block, not on the concatenated array.
    calls = []
    original = xd.block_partial

    def counting(plan, a, b, weights=None):
        calls.append(a.shape)
        return original(plan, a, b, weights)

    try:
        xd.block_partial = counting
        xd.cross_entropy(x, y).compute(scheduler="sync")
    finally:
        xd.block_partial = original
    assert sorted(calls) == [(10, 6)] * 4


@pytest.mark.parametrize("reduction", ["none"])
def test_dask_reduction_none(reduction):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(19, 4, 3))
    y = rng.integers(0, 4, size=(19, 3))
    y[0, 0] = -100
    w = rng.uniform(0.5, 2, size=4)
    lazy = xd.cross_entropy(da.from_array(x, chunks=6), y, w, reduction=reduction)
    assert lazy.shape == (19, 3) and lazy.chunks[0] == (6, 6, 6, 1)
    np.testing.assert_allclose(lazy.compute(), rs.cross_entropy(x, y, w, reduction="none")[0],
                               rtol=1e-12, atol=1e-15)
    q = rng.dirichlet(np.ones(4), size=(19, 3)).transpose(0, 2, 1).copy()
    lazy = xd.cross_entropy(da.from_array(x, chunks=6), da.from_array(q, chunks=5),
                            reduction="none")
    np.testing.assert_allclose(lazy.compute(), rs.cross_entropy(x, q, reduction="none")[0],
                               rtol=1e-12)
    p = rng.uniform(0.01, 0.99, size=(19, 5)).astype(np.float32)
    t = rng.uniform(size=(19, 5)).astype(np.float32)
    lazy = xd.binary_cross_entropy(da.from_array(p, chunks=4), t, reduction="none")
    assert lazy.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(), rb.bce_ref(p, t, reduction="none")[0], rtol=1e-5)
    lazy = xd.nll_loss(da.from_array(x, chunks=7), y, reduction="none")
    np.testing.assert_allclose(lazy.compute(), rs.nll_loss(x, y, reduction="none")[0], rtol=1e-12)


def test_dask_tf_per_row_and_softmax():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(17, 6))
    z = rng.uniform(size=(17, 6))
    y = rng.integers(0, 6, size=17)
    xl = da.from_array(x, chunks=5)
    got = xd.sparse_softmax_cross_entropy_with_logits(y, xl)
    assert got.shape == (17,) and got.chunks == ((5, 5, 5, 2),)
    np.testing.assert_allclose(got.compute(), rb.sparse_tf_ref(y, x)[0], rtol=1e-12)
    np.testing.assert_allclose(xd.softmax_cross_entropy_with_logits(z, xl).compute(),
                               rb.softmax_tf_ref(z, x)[0], rtol=1e-12)
    np.testing.assert_allclose(xd.sigmoid_cross_entropy_with_logits(z, xl).compute(),
                               rb.sigmoid_tf_ref(z, x)[0], rtol=1e-12)
    np.testing.assert_allclose(xd.log_softmax(xl, dim=1).compute(), rs.log_softmax(x, dim=1),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(xd.softmax(xl, dim=-1).compute(), rs.softmax(x, dim=-1),
                               rtol=1e-12, atol=1e-15)


def test_dask_global_normalizers_with_uneven_blocks():
    """Blocks with very different valid counts: a per-block mean would be far off."""
    rng = np.random.default_rng(3)
    s = rng.normal(size=(30, 4, 5))
    lab = rng.integers(0, 4, size=(30, 5))
    lab[:10] = 255  # the first block is all ignored
    lab[10:20, 1:] = 255  # the second almost
    lazy = xd.softmax_with_loss(da.from_array(s, chunks=10), lab, ignore_label=255)
    expected = xentkit.softmax_with_loss(s, lab, ignore_label=255, diff=False)[0]
    assert float(lazy.compute()) == pytest.approx(expected, rel=1e-12)
    per_block = np.mean([xentkit.softmax_with_loss(s[i:i + 10], lab[i:i + 10], ignore_label=255,
                                                   diff=False)[0] for i in (0, 10, 20)])
    assert abs(per_block - expected) > 1e-3 * expected
    y = np.where(lab == 255, -100, lab)
    w = rng.uniform(0.1, 3.0, size=4)
    lazy = xd.cross_entropy(da.from_array(s, chunks=10), y, w)
    assert float(lazy.compute()) == pytest.approx(xentkit.cross_entropy(s, y, w), rel=1e-12)


def test_dask_nan_and_empty():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 3))
    y = np.full(12, -100)
    assert math.isnan(float(xd.cross_entropy(da.from_array(x, chunks=5), y).compute()))
    assert float(xd.cross_entropy(da.from_array(x, chunks=5), y, reduction="sum").compute()) == 0
    x[7, 2] = np.nan
    t = rng.uniform(size=(12, 3))
    assert math.isnan(float(xd.sigmoid_cross_entropy_loss(
        da.from_array(x, chunks=5), t).compute()))
    empty = xd.softmax_with_loss(da.zeros((0, 3, 2), chunks=1), np.zeros((0, 2)))
    assert float(empty.compute()) == 0


def test_dask_errors():
    rng = np.random.default_rng(5)
    x = da.from_array(rng.normal(size=(10, 4)), chunks=3)
    # Shapes and options: when the graph is built.
    with pytest.raises(ValueError, match=r"target: expected a first dimension of 10"):
        xd.cross_entropy(x, np.zeros(9, dtype=np.int64))
    with pytest.raises(ValueError, match=r"weight: expected a 1-D array of 4 class weights"):
        xd.cross_entropy(x, np.zeros(10, dtype=np.int64), np.ones(3))
    with pytest.raises(ValueError, match=r"normalization: expected one of"):
        xd.softmax_with_loss(x, np.zeros(10, dtype=np.int64), normalization="mean")
    with pytest.raises(ValueError, match=r"reduction: expected"):
        xd.binary_cross_entropy_with_logits(x, x, reduction="avg")
    with pytest.raises(TypeError, match=r"target: expected a floating dtype"):
        xd.binary_cross_entropy_with_logits(x, np.zeros((10, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"labels: expected 10 values"):
        xd.softmax_with_loss(x, np.zeros(11, dtype=np.int64))
    # Labels: when it is computed, with the library's error.
    y = np.zeros(10, dtype=np.int64)
    y[8] = 4
    lazy = xd.cross_entropy(x, y)
    with pytest.raises(xentkit.LabelError, match=r"got 4 at flat index 2"):
        lazy.compute(scheduler="sync")


def test_dask_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(6)
    s = rng.normal(size=(50, 5, 4)).astype(np.float32)
    lab = rng.integers(0, 5, size=(50, 4)).astype(np.int32)
    lab[rng.uniform(size=lab.shape) < 0.3] = -1
    x = rng.normal(size=(50, 5))
    y = rng.integers(0, 5, size=50)
    w = rng.uniform(0.5, 2.0, size=5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        caffe = xd.softmax_with_loss(da.from_array(s, chunks=8), lab, ignore_label=-1,
                                     normalization="full")
        torch_like = xd.cross_entropy(da.from_array(x, chunks=9), y, w, label_smoothing=0.05)
        per_row = xd.sparse_softmax_cross_entropy_with_logits(y, da.from_array(x, chunks=9))
        got_caffe, got_torch, got_rows = client.compute([caffe, torch_like, per_row], sync=True)
    assert float(got_caffe) == pytest.approx(
        xentkit.softmax_with_loss(s, lab, ignore_label=-1, normalization="full",
                                  diff=False)[0], rel=2e-6)
    assert float(got_torch) == pytest.approx(
        rs.cross_entropy(x, y, w, label_smoothing=0.05)[0], rel=1e-12)
    np.testing.assert_allclose(got_rows, rb.sparse_tf_ref(y, x)[0], rtol=1e-12)


def test_dask_class_axis_zero_is_one_block():
    rng = np.random.default_rng(7)
    x = rng.normal(size=6)
    y = np.array(3)
    lazy = xd.cross_entropy(da.from_array(x, chunks=2), y)
    assert float(lazy.compute()) == pytest.approx(rs.cross_entropy(x, y)[0], rel=1e-12)
    s = rng.normal(size=(4, 3))
    lab = rng.integers(0, 4, size=3)
    lazy = xd.softmax_with_loss(da.from_array(s, chunks=1), lab, axis=0)
    assert float(lazy.compute()) == pytest.approx(
        xentkit.softmax_with_loss(s, lab, axis=0, diff=False)[0], rel=1e-12)
    z = rng.uniform(size=(4, 3))
    lazy = xd.softmax_cross_entropy_with_logits(z, da.from_array(s, chunks=1), axis=0)
    assert lazy.shape == (3,)
    np.testing.assert_allclose(lazy.compute(), rb.softmax_tf_ref(z, s, axis=0)[0], rtol=1e-12)


def test_dask_weights_as_dask_arrays():
    """A weight of the input's shape is cut into the input's row blocks whatever its own
    chunks; a broadcast weight is used whole in every block."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 4))
    t = rng.uniform(size=(20, 4))
    w = rng.uniform(0.1, 2.0, size=(20, 4))
    pw = rng.uniform(0.5, 3.0, size=4)
    args = (da.from_array(x, chunks=6), t, da.from_array(w, chunks=7))
    kwargs = {"pos_weight": da.from_array(pw, chunks=2)}
    got = xd.binary_cross_entropy_with_logits(*args, **kwargs).compute()
    assert float(got) == pytest.approx(rb.bce_logits_ref(x, t, w, pos_weight=pw)[0], rel=1e-12)
    per = xd.binary_cross_entropy_with_logits(*args, reduction="none", **kwargs).compute()
    np.testing.assert_allclose(
        per, rb.bce_logits_ref(x, t, w, reduction="none", pos_weight=pw)[0], rtol=1e-12)
