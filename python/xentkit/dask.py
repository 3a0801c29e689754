"""xentkit's losses over dask arrays chunked along the batch axis (axis 0).

Every function takes the arguments of the eager function of the same name (``xentkit.<name>``)
with dask arrays (NumPy arrays and other array-likes are wrapped with ``dask.array.asarray``) and
returns a lazy dask array:

* the losses with a reduction -- Caffe's :func:`sigmoid_cross_entropy_loss` and
  :func:`softmax_with_loss` (any normalization), PyTorch's :func:`binary_cross_entropy`,
  :func:`binary_cross_entropy_with_logits`, :func:`cross_entropy` and :func:`nll_loss` with
  ``reduction="mean"`` or ``"sum"`` -- give a 0-d float64 array whose value equals one eager
  call on the whole arrays (the eager result, a Python float, rounded to the result dtype).
  Each block of rows gives partial sums (the loss with normalization "none" / reduction "sum",
  the count of non-ignored positions, the sum of the target weights, ...), which are added and
  divided once: Caffe's ``max(1, Z)`` normalizers and PyTorch's weighted means are global
  quantities, so they are never averaged per block.
* ``reduction="none"`` and the TensorFlow functions (:func:`sigmoid_cross_entropy_with_logits`,
  :func:`softmax_cross_entropy_with_logits`, :func:`sparse_softmax_cross_entropy_with_logits`),
  as well as :func:`log_softmax` and :func:`softmax`, give the per-element (per-row) array,
  chunked along axis 0 as the input.

Chunking: the blocks are the input's blocks along axis 0; the other axes are rechunked to one
block each (a softmax needs a whole row), and the second array (and a weight with the input's
own shape) is rechunked to the input's row blocks. When axis 0 is the class axis (1-D inputs of
the class-index losses, ``axis=0``) the whole array is one block.

The Caffe layers return the loss only (no ``diff``); the PyTorch and TensorFlow functions take
no ``grad``: gradients over dask arrays are not offered (call the eager functions per block).
Labels are checked when the graph is computed (a bad label raises :class:`xentkit.LabelError`
from ``compute()``); shapes and options are checked when the graph is built.

Requires the ``dask`` extra (``pip install "xentkit[dask]"``); works on every dask scheduler,
``dask.distributed`` included.
"""

from __future__ import annotations

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as e:  # pragma: no cover - exercised only without dask
    raise ImportError("xentkit.dask needs dask: pip install 'xentkit[dask]'") from e

from . import _partial
from ._partial import LOSSES, block_partial, check_block_shapes, finish, make_plan

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "log_softmax",
    "nll_loss", "sigmoid_cross_entropy_loss", "sigmoid_cross_entropy_with_logits", "softmax",
    "softmax_cross_entropy_with_logits", "softmax_with_loss",
    "sparse_softmax_cross_entropy_with_logits",
]


def _array(x, name):
    if isinstance(x, da.Array):
        return x
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        return da.asarray(x)
    except Exception as e:
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({e})") from None


def _row_blocks(x, splittable):
    """x with one block per row block along axis 0 and single blocks on the other axes."""
    if x.ndim == 0:
        return x
    if not splittable:
        return x.rechunk(-1)
    return x.rechunk({i: -1 for i in range(1, x.ndim)})


def _align(y, x, splittable, reshape_rows=None):
    """y cut into x's row blocks (after reshaping to (rows, -1) for Caffe labels)."""
    if reshape_rows is not None:
        y = y.reshape(reshape_rows, -1)
    if y.ndim == 0 or not splittable:
        return y.rechunk(-1)
    return y.rechunk((x.chunks[0],) + tuple((s,) for s in y.shape[1:]))


def _blocks(arr):
    return list(arr.to_delayed().ravel()) if arr.ndim else [arr.to_delayed().ravel()[0]]


def _prepare(name, a, b, options, weights):
    info = LOSSES[name]
    a = _array(a, info.arrays[0])
    b = _array(b, info.arrays[1])
    weights = {k: (v if isinstance(v, da.Array) else np.asarray(v))
               for k, v in weights.items() if v is not None}
    for arr, arr_name in ((a, info.arrays[0]), (b, info.arrays[1])):
        if any(isinstance(s, float) and np.isnan(s) for s in arr.shape):
            raise ValueError(f"{arr_name}: expected known chunk sizes (call "
                             f"compute_chunk_sizes() first), got shape {arr.shape}")
    plan = make_plan(name, a.shape, a.dtype, b.shape, b.dtype, options,
                     {k: v.shape for k, v in weights.items()})
    a = _row_blocks(a, plan.splittable)
    b = _align(b, a, plan.splittable,
               plan.rows if plan.splittable and plan.target_rows == "reshape" else None)
    # A zero-row call checks shapes, dtypes and options now rather than at compute time.
    check_block_shapes(plan, a.shape, a.dtype, b.shape, b.dtype,
                       {k: _eager_weight(w[:0] if k in plan.row_weights else w)
                        for k, w in weights.items()})
    aligned = {}
    for k, w in weights.items():
        if k in plan.row_weights:
            aligned[k] = _blocks(_align(_array(w, k), a, True))
        else:
            aligned[k] = [w] * len(a.chunks[0] if plan.splittable and a.ndim else [0])
    return plan, a, b, aligned


def _eager_weight(w):
    return w.compute() if isinstance(w, da.Array) else w


def _reduced(name, a, b, options, weights):
    plan, a, b, aligned = _prepare(name, a, b, options, weights)
    ablocks, bblocks = _blocks(a), _blocks(b)
    parts = [dask.delayed(block_partial, pure=True)(
        plan, ab, bb, {k: v[i] for k, v in aligned.items()})
        for i, (ab, bb) in enumerate(zip(ablocks, bblocks))]
    value = dask.delayed(_combine, pure=True)(plan, parts)
    return da.from_delayed(value, shape=(), dtype=np.float64)


def _combine(plan, parts):
    totals = np.zeros(4, dtype=np.float64)
    for p in parts:
        totals += p
    return np.float64(finish(plan, totals)["value"])


def _elementwise(name, fn, a, b, options, weights, out_shape, kwargs):
    """Per-element losses: fn on each row block, concatenated along axis 0."""
    plan, a, b, aligned = _prepare(name, a, b, options, weights)
    ablocks, bblocks = _blocks(a), _blocks(b)
    dtype = plan.result_dtype
    pieces = []
    rows = a.chunks[0] if plan.splittable and a.ndim else (a.shape[0] if a.ndim else None,)
    for i, (ab, bb) in enumerate(zip(ablocks, bblocks)):
        w = {k: v[i] for k, v in aligned.items()}
        args = (bb, ab) if plan.info.family == "tf" else (ab, bb)
        shape = out_shape if not plan.splittable else (rows[i],) + out_shape[1:]
        pieces.append(da.from_delayed(dask.delayed(_call, pure=True)(fn, args, {**kwargs, **w}),
                                      shape=shape, dtype=dtype))
    if len(pieces) == 1:
        return pieces[0]
    return da.concatenate(pieces, axis=0)


def _call(fn, args, kwargs):
    return np.asarray(fn(*args, **kwargs))


def sigmoid_cross_entropy_loss(scores, targets, *, ignore_label=None, normalization=None,
                               normalize=None):
    """Caffe's SigmoidCrossEntropyLoss over row blocks: a lazy 0-d float64 array equal to
    ``xentkit.sigmoid_cross_entropy_loss(scores, targets, ...)[0]``.

    scores: (N, ...) float16/32/64; targets: the same shape (or element count with first
    dimension N). Loss ``sum(max(x, 0) - x*t + log1p(exp(-|x|))) / max(1, Z)`` over non-ignored
    elements, Z of the whole array (default normalization "batch_size": Z = N)."""
    return _reduced("sigmoid_cross_entropy_loss", scores, targets,
                    {"ignore_label": ignore_label, "normalization": normalization,
                     "normalize": normalize}, {})


def softmax_with_loss(scores, labels, *, axis=1, ignore_label=None, normalization=None,
                      normalize=None):
    """Caffe's SoftmaxWithLoss over row blocks: a lazy 0-d float64 array equal to
    ``xentkit.softmax_with_loss(scores, labels, ...)[0]``.

    scores: (N, ..., C, ...) with C at `axis` (>= 1 to split rows; axis 0 makes one block);
    labels: outer*inner values, shaped (N, ...) or any shape with that count (then read as
    (N, -1)). Loss ``sum -log(max(p[label], FLT_MIN)) / max(1, Z)`` over the valid positions,
    Z of the whole array (default normalization "valid")."""
    return _reduced("softmax_with_loss", scores, labels,
                    {"axis": axis, "ignore_label": ignore_label,
                     "normalization": normalization, "normalize": normalize}, {})


def _torch(name, fn, input, target, weights, options, reduction):
    if reduction == "none":
        opts = {k: v for k, v in options.items() if v is not None}
        plan_opts = dict(opts, reduction="mean")
        a = _array(input, "input")
        if name in ("cross_entropy", "nll_loss"):
            t_shape = _array(target, "target").shape
            out_shape = (a.shape[:1] + a.shape[2:] if a.ndim > 1 else ())
            if tuple(t_shape) != tuple(a.shape) or name == "nll_loss":
                out_shape = tuple(t_shape) if a.ndim > 1 else ()
        else:
            out_shape = a.shape
        return _elementwise(name, fn, input, target, plan_opts, weights, tuple(out_shape),
                            dict(opts, reduction="none"))
    return _reduced(name, input, target, dict(options, reduction=reduction), weights)


def binary_cross_entropy(input, target, weight=None, *, reduction="mean"):
    """PyTorch's binary_cross_entropy over row blocks. input: probabilities in [0, 1], any shape
    (N, ...); target: the same shape; weight broadcast against the trailing dimensions (or of
    the input's shape, cut with the rows). ``"mean"`` divides the sum of
    ``-w * (t*max(log p, -100) + (1-t)*max(log(1-p), -100))`` by the element count of the whole
    array; returns a lazy 0-d float64 array, or for ``"none"`` the lazy per-element losses."""
    return _torch("binary_cross_entropy", _partial._functional.binary_cross_entropy, input, target,
                  {"weight": weight}, {}, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction="mean",
                                     pos_weight=None):
    """PyTorch's binary_cross_entropy_with_logits over row blocks (see
    :func:`binary_cross_entropy`): per element ``w * ((1 - t) * x + L * log(1 + exp(-x)))`` with
    ``L = 1 + (pos_weight - 1) * t``; ``"mean"`` divides by the element count."""
    return _torch("binary_cross_entropy_with_logits",
                  _partial._functional.binary_cross_entropy_with_logits, input, target,
                  {"weight": weight, "pos_weight": pos_weight}, {}, reduction)


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """PyTorch's cross_entropy over row blocks. input: logits (N, C, d1, ...) (a 1-D (C,)
    input is one block); target: class indices (N, d1, ...) of any integer dtype, or class
    probabilities of the input's shape; weight: (C,). ``"mean"`` with class indices divides by
    the sum over the whole array of the weights of the non-ignored targets (NaN when it is 0),
    with probabilities by the number of positions N*d1*...; label smoothing as the eager
    function. Returns a lazy 0-d float64 array, or for ``"none"`` the lazy per-position losses
    (N, d1, ...)."""
    return _torch("cross_entropy", _partial._functional.cross_entropy, input, target,
                  {"weight": weight},
                  {"ignore_index": ignore_index, "label_smoothing": label_smoothing}, reduction)


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):
    """PyTorch's nll_loss over row blocks: ``-w[y] * input[y]`` per position, means as
    :func:`cross_entropy` with class indices."""
    return _torch("nll_loss", _partial._functional.nll_loss, input, target, {"weight": weight},
                  {"ignore_index": ignore_index}, reduction)


def _tf(name, fn, labels, logits, options, out_shape_fn):
    a = _array(logits, "logits")
    kw = {k: v for k, v in options.items() if v is not None}
    return _elementwise(name, fn, a, labels, kw, {}, out_shape_fn(a), kw)


def sigmoid_cross_entropy_with_logits(labels, logits):
    """TF's sigmoid_cross_entropy_with_logits per element, lazily over row blocks:
    ``max(x, 0) - x*z + log(1 + exp(-|x|))``, the logits' shape and dtype."""
    return _tf("sigmoid_cross_entropy_with_logits",
               _partial._tf.sigmoid_cross_entropy_with_logits, labels, logits, {},
               lambda a: a.shape)


def softmax_cross_entropy_with_logits(labels, logits, axis=-1):
    """TF's softmax_cross_entropy_with_logits per row, lazily over row blocks:
    ``-sum_c z[c] * log softmax(x)[c]`` along `axis` (the logits' shape without `axis`)."""
    def shape(a):
        ax = _partial._axis(axis, a.ndim, -1)
        return a.shape[:ax] + a.shape[ax + 1:]
    return _tf("softmax_cross_entropy_with_logits",
               _partial._tf.softmax_cross_entropy_with_logits, labels, logits, {"axis": axis},
               shape)


def sparse_softmax_cross_entropy_with_logits(labels, logits):
    """TF's sparse_softmax_cross_entropy_with_logits per row, lazily over row blocks:
    ``-log softmax(x)[label]`` with the class axis last (shape ``logits.shape[:-1]``)."""
    return _tf("sparse_softmax_cross_entropy_with_logits",
               _partial._tf.sparse_softmax_cross_entropy_with_logits, labels, logits, {},
               lambda a: a.shape[:-1])


def _softmax_like(fn, input, dim):
    x = _array(input, "input")
    ax = _partial._axis(dim, x.ndim, -1)
    x = _row_blocks(x, x.ndim >= 2 and ax >= 1)
    # An eager call on a tiny array checks dtype and dim now and gives the result dtype.
    meta = fn(np.zeros((0,) + x.shape[1:] if x.ndim >= 2 else (1,) * x.ndim, x.dtype), dim=dim)
    return x.map_blocks(fn, dim=dim, dtype=meta.dtype)


def log_softmax(input, dim=-1):
    """``xentkit.log_softmax`` block by block (rows along axis 0; `dim` >= 1 or the whole array
    as one block)."""
    return _softmax_like(_partial._functional.log_softmax, input, dim)


def softmax(input, dim=-1):
    """``xentkit.softmax`` block by block (rows along axis 0; `dim` >= 1 or one block)."""
    return _softmax_like(_partial._functional.softmax, input, dim)
