"""The fused linear cross-entropy on NumPy arrays: ``cross_entropy(input @ W.T + b, target)``
without the N x V logits.

Rows go through in chunks. Per chunk: the logits from NumPy's BLAS (``np.matmul``), xentkit's
fused kernel turns them into the chunk's losses and, in place, into the gradient of the whole
call's loss (the divisor of "mean" is known from the targets before the first chunk), and BLAS
finishes the chunk: ``grad_input[chunk] = dlogits @ W`` and ``grad_W += dlogits.T @ input[chunk]``
(accumulated a block of W's rows at a time, the block's partial product still in cache), the
bias gradient as the column sums of dlogits. A chunk whose targets are all ignored skips its
products: its losses and gradient rows are 0.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core
from ._arrays import as_array, ignore_value, index_array, is_floating, real_value, result_dtype
from ._functional import _reduction, _scalar_result, _smoothing, _z_loss

# A chunk's logits take at most this many bytes by default ...
_CHUNK_BYTES = 96 << 20
# ... and at most 1/_CHUNK_SHARE of the whole call's logits (for the memory bound), but never
# fewer than _MIN_ROWS rows. Every chunk moves W (read twice) and grad_W (read and written) through
# memory once, whatever its rows, so the rows must be many for the products' arithmetic to hide
# it: 128 rows cost 1.22x the products alone at V = 128256, D = 512 (measured in the README).
_CHUNK_SHARE = 10
_MIN_ROWS = 32
# Rows of W per block of the grad_W accumulation: the block's partial product (rows x D) is
# added to grad_W while it is still in cache.
_BLOCK_BYTES = 1 << 20


def _softcap(softcap):
    """None (no capping) as 0.0, or a finite value > 0."""
    if softcap is None:
        return 0.0
    s = real_value(softcap, "softcap")
    if not (0.0 < s < math.inf):
        raise ValueError(f"softcap: expected None or a finite value > 0, got {s}")
    return s


def default_chunk_rows(rows, classes, itemsize):
    """The rows per chunk that ``chunk_size=None`` picks for `rows` positions over `classes`
    classes of `itemsize`-byte logits."""
    per_row = max(1, classes * itemsize)
    n = min(_CHUNK_BYTES // per_row, rows // _CHUNK_SHARE)
    n = max(n, _MIN_ROWS)
    n -= n % 32  # whole register blocks of the BLAS kernels
    return int(max(1, min(n, rows)))


def _chunk_rows(chunk_size, rows, classes, itemsize):
    if chunk_size is None:
        return default_chunk_rows(rows, classes, itemsize)
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size: expected None or an int >= 1, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected None or an int >= 1, got {chunk_size}")
    return int(min(chunk_size, max(rows, 1)))


def _matrix(arr, name, dtype):
    """`arr` as `dtype`, C- or F-contiguous (BLAS reads either without a copy)."""
    if arr.dtype == dtype and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


def _vector(arr, name, length, dtype, what):
    if arr is None:
        return None
    a = as_array(arr, name)
    if a.dtype.kind not in "iuf" or a.dtype.kind == "b":
        raise TypeError(f"{name}: expected a numeric dtype, got {a.dtype}")
    if a.ndim != 1 or a.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D array of {length} {what}, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None, grad=False):
    """Cross entropy of ``input @ linear_weight.T + linear_bias`` against class indices, without
    ever holding the N x V logits (PyTorch's ``F.linear_cross_entropy``).

    Parameters
    ----------
    input : (..., D) float32 or float64 (float16/bfloat16 through ``xentkit.torch``).
    linear_weight : (V, D), the classifier's weight (``nn.Linear(D, V).weight``).
    target : class indices of shape ``input.shape[:-1]``, any integer dtype.
    linear_bias : (V,) or None.
    weight : (V,) class weights or None.
    ignore_index, reduction, label_smoothing : as :func:`xentkit.cross_entropy` (class axis last).
    z_loss : >= 0; adds ``z_loss * lse**2`` per non-ignored position, weighted and reduced as its
        cross-entropy term.
    softcap : None, or > 0: logits ``x`` become ``softcap * tanh(x / softcap)`` first.
    chunk_size : rows per chunk, or None: chunks of at most 96 MiB of logits and at most a tenth
        of the whole logits, but at least 32 rows, a multiple of 32 (each chunk moves W and
        grad_W through memory once, so fewer rows pay that more often).
    grad : False, or True for ``(loss, grad_input, grad_linear_weight, grad_linear_bias)`` (the
        last None without a bias): the gradients of the returned loss (of the sum of the
        per-position losses for "none").

    Memory beyond the inputs and outputs: one chunk of logits (chunk_size x V) and one block of
    W's shape (at most 1 MiB); with ``grad=False`` nothing of size V x D is allocated. An index
    outside [0, V) that is not ignore_index raises :class:`LabelError` before any product runs.
    """
    x0 = as_array(input, "input")
    w0 = as_array(linear_weight, "linear_weight")
    t0 = as_array(target, "target")
    if x0.ndim < 1:
        raise ValueError(f"input: expected an array of shape (..., D), got shape {x0.shape}")
    if w0.ndim != 2:
        raise ValueError(
            f"linear_weight: expected a 2-D array of shape (V, D), got shape {w0.shape}")
    rdt = result_dtype((x0, w0), ("input", "linear_weight"))
    for arr, name in ((x0, "input"), (w0, "linear_weight")):
        if arr.dtype.itemsize == 2:
            raise TypeError(
                f"{name}: expected float32 or float64 (float16 and bfloat16 go through "
                f"xentkit.torch.linear_cross_entropy), got {arr.dtype}")
    classes, depth = w0.shape
    if x0.shape[-1] != depth:
        raise ValueError(
            f"linear_weight: expected shape ({classes}, {x0.shape[-1]}) for input of shape {x0.shape} "
            f"(its last dimension is D), got shape {w0.shape}")
    if t0.shape != x0.shape[:-1]:
        raise ValueError(
            f"target: expected class indices of shape {x0.shape[:-1]} for input of shape "
            f"{x0.shape}, got shape {t0.shape}")
    if is_floating(t0.dtype):
        raise TypeError(
            f"target: expected class indices of an integer dtype, got {t0.dtype} (the fused "
            f"linear cross-entropy takes class indices only)")
    t = index_array(t0, "target").reshape(-1)
    bias = _vector(linear_bias, "linear_bias", classes, rdt, "biases")
    cw = _vector(weight, "weight", classes, rdt, "class weights")
    red = _reduction(reduction)
    eps = _smoothing(label_smoothing)
    z = _z_loss(z_loss)
    cap = _softcap(softcap)
    ignore = ignore_value(ignore_index, "ignore_index", allow_none=False)
    want = not (grad is False or grad is None)
    if not (grad is False or grad is None or grad is True):
        raise TypeError(f"grad: expected False or True, got {grad!r}")
    rows = t.shape[0]
    chunk = _chunk_rows(chunk_size, rows, classes, rdt.itemsize)
    # Every target is checked (LabelError) before any product runs.
    plan = _core.linear_plan(t, classes, None if cw is None else cw.astype(np.float64), ignore,
                             red, eps, z, cap, 1.0)
    x = np.ascontiguousarray(x0, dtype=rdt).reshape(rows, depth)
    w = _matrix(w0, "linear_weight", rdt)
    loss_rows = np.zeros(rows, dtype=rdt) if red == 0 else None
    gx = gw = gb = None
    if want:
        gx = np.empty((rows, depth), dtype=rdt)
        gw = np.zeros((classes, depth), dtype=rdt)
        gb = np.zeros(classes, dtype=rdt) if bias is not None else None
    buf = np.empty((min(chunk, rows), classes), dtype=rdt) if rows and classes else None
    block = max(256, _BLOCK_BYTES // max(1, depth * rdt.itemsize))
    partial = np.empty((min(block, classes), depth), dtype=rdt) if want else None
    ones = np.ones(min(chunk, rows), dtype=rdt) if gb is not None else None
    total = 0.0
    first = True
    for r in range(0, rows, chunk):
        n = min(chunk, rows - r)
        tc = t[r:r + n]
        if plan.valid < rows and not np.any(tc != ignore):
            # Every target of the chunk is ignored: losses 0, gradient rows 0, no product.
            if want:
                gx[r:r + n] = 0
            continue
        if buf is None:  # V == 0 (only ignored targets reach here) or no rows
            continue
        logits = buf[:n]
        xc = x[r:r + n]
        np.matmul(xc, w.T, out=logits)
        if bias is not None:
            logits += bias
        total += _core.linear_chunk(plan, logits.reshape(-1), tc, cw,
                                    None if loss_rows is None else loss_rows[r:r + n], want)
        if not want:
            continue
        np.matmul(logits, w, out=gx[r:r + n])
        if gb is not None:
            gb += ones[:n] @ logits
        if first:
            np.matmul(logits.T, xc, out=gw)
            first = False
            continue
        for v in range(0, classes, block):
            m = min(block, classes - v)
            part = partial[:m]
            np.matmul(logits[:, v:v + m].T, xc, out=part)
            gw[v:v + m] += part
    if red == 0:
        loss = loss_rows.reshape(x0.shape[:-1])
    else:
        loss = _scalar_result(plan.result(total), rdt)
    if not want:
        return loss
    return loss, gx.reshape(x0.shape), gw, gb
