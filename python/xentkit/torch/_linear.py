"""The fused linear cross-entropy on tensors: ``cross_entropy(input @ W.T + b, target)`` without
the N x V logits, as one autograd operation (``torch.ops.xentkit.linear_cross_entropy``).

The chunk loop of :mod:`xentkit._linear` with torch's matrix products (MKL/oneDNN on the CPU,
cuBLAS on CUDA): per chunk of rows, ``torch.mm`` gives the logits, xentkit's fused kernel turns
them into the chunk's losses and, in place, into their gradient, and ``torch.mm`` /
``Tensor.addmm_`` (which accumulates without a temporary) finish the chunk. The forward pass of a
reduced loss ("mean", "sum") computes all three gradients and the backward pass only scales
them by the upstream gradient. For ``reduction="none"`` the forward pass only scores (nothing of
size V x D is allocated) and the backward pass runs the loop again with each row's upstream
gradient, since W's gradient mixes the rows.

16-bit tensors: on CUDA the products run in the tensor's dtype (cuBLAS accumulates in float32)
with float32 gradient accumulators for W and b; on the CPU, where 16-bit products are emulated,
the call runs in float32 over float32 copies of input and W and rounds the gradients once.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from xentkit import _core
from xentkit import _linear as _np_linear

from . import _bridge

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_SECOND = ("xentkit.torch: the second derivative of linear_cross_entropy is not supported (its "
           "backward pass only scales the gradients saved by the forward pass)")


def _cpu_loop(x, w, t, bias, cweight, ignore_index, red, eps, z, cap, chunk, need, row_scale):
    """The chunk loop over float32/float64 CPU tensors. need = (input, weight, bias) gradients
    wanted; row_scale: None, or the (N,) upstream gradient of the per-row losses. Returns
    (loss tensor or float sum, gx, gw, gb)."""
    rows, depth = x.shape
    classes = w.shape[0]
    tn = t.numpy()
    plan = _core.linear_plan(tn, classes,
                             None if cweight is None else cweight.double().numpy(), ignore_index,
                             red, eps, z, cap, 1.0)
    cwn = None if cweight is None else cweight.to(x.dtype).contiguous().numpy()
    want = any(need)
    loss_rows = torch.zeros(rows, dtype=x.dtype) if red == 0 else None
    loss_np = None if loss_rows is None else loss_rows.numpy()
    gx = torch.empty_like(x) if need[0] else None
    gw = torch.zeros_like(w) if need[1] else None
    gb = torch.zeros(classes, dtype=x.dtype) if need[2] else None
    buf = torch.empty((min(chunk, rows), classes), dtype=x.dtype) if rows and classes else None
    total = 0.0
    for r in range(0, rows, chunk):
        n = min(chunk, rows - r)
        tc = tn[r:r + n]
        if plan.valid < rows and not np.any(tc != ignore_index):
            if gx is not None:
                gx[r:r + n] = 0
            continue
        if buf is None:
            continue
        logits = buf[:n]
        xc = x[r:r + n]
        if bias is not None:
            torch.addmm(bias, xc, w.t(), out=logits)
        else:
            torch.mm(xc, w.t(), out=logits)
        total += _core.linear_chunk(plan, logits.numpy().reshape(-1), tc, cwn,
                                    None if loss_np is None else loss_np[r:r + n], want)
        if not want:
            continue
        if row_scale is not None:
            logits.mul_(row_scale[r:r + n, None])
        if gx is not None:
            torch.mm(logits, w, out=gx[r:r + n])
        if gw is not None:
            gw.addmm_(logits.t(), xc)
        if gb is not None:
            gb.add_(logits.sum(0))
    if red == 0:
        return loss_rows, gx, gw, gb
    return plan.result(total), gx, gw, gb


def _cuda_loop(x, w, t, bias, cweight, ignore_index, red, eps, z, cap, chunk, need, row_scale):
    """The chunk loop on CUDA: the kernel is the device cross_entropy (reduction "sum", the
    gradient written over the chunk's logits on the current stream); the mean's divisor is a
    device tensor the gradients are divided by at the end, so nothing synchronises the host."""
    import xentkit as _xk

    rows, depth = x.shape
    classes = w.shape[0]
    sixteen = x.dtype in (torch.float16, torch.bfloat16)
    acc = torch.float32 if sixteen else x.dtype
    want = any(need)
    valid = t != ignore_index
    if red == 1:
        if cweight is None:
            divisor = valid.sum().to(acc)
        else:
            divisor = torch.where(valid, cweight[t.clamp(0, max(classes - 1, 0))], 0).sum().to(acc)
    loss_rows = torch.zeros(rows, dtype=x.dtype, device=x.device) if red == 0 else None
    total = torch.zeros((), dtype=acc, device=x.device)
    gx = torch.empty_like(x) if need[0] else None
    gw = torch.zeros(w.shape, dtype=acc, device=x.device) if need[1] else None
    gb = torch.zeros(classes, dtype=acc, device=x.device) if need[2] else None
    stream = _bridge.stream_kw(x)
    for r in range(0, rows, chunk):
        n = min(chunk, rows - r)
        xc = x[r:r + n]
        logits = torch.addmm(bias, xc, w.t()) if bias is not None else torch.mm(xc, w.t())
        kw = dict(reduction="none" if red == 0 else "sum", ignore_index=ignore_index,
                  label_smoothing=eps, z_loss=z, softcap=cap if cap != 0.0 else None, **stream)
        if want:
            value, _ = _xk.cross_entropy(logits, t[r:r + n], cweight, grad=logits, **kw)
        else:
            value = _xk.cross_entropy(logits, t[r:r + n], cweight, **kw)
        if red == 0:
            loss_rows[r:r + n] = _bridge.tensor(value, x)
        else:
            total += _bridge.tensor(value, total)
        if not want:
            continue
        if row_scale is not None:
            logits.mul_(row_scale[r:r + n, None].to(logits.dtype))
        if gx is not None:
            torch.mm(logits, w, out=gx[r:r + n])
        if gw is not None:
            gw.add_(torch.mm(logits.t(), xc).to(acc))
        if gb is not None:
            gb.add_(logits.sum(0, dtype=acc))
    if red == 1:
        total = total / divisor
        if gx is not None:
            gx = (gx / divisor).to(x.dtype)
        if gw is not None:
            gw = gw / divisor
        if gb is not None:
            gb = gb / divisor
    if gw is not None:
        gw = gw.to(x.dtype)
    if gb is not None:
        gb = gb.to(x.dtype)
    return (loss_rows if red == 0 else total.to(x.dtype)), gx, gw, gb


def run(input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
        label_smoothing, z_loss, softcap, chunk_size, need=(True, True, True), row_scale=None):
    """The whole call: (loss tensor, grad_input, grad_linear_weight, grad_linear_bias); the
    gradients not in `need` (and all of them when need has none) are None."""
    red = _REDUCTIONS[reduction]
    eps = _np_linear._smoothing(label_smoothing)
    z = _np_linear._z_loss(z_loss)
    cap = _np_linear._softcap(softcap)
    depth = linear_weight.shape[1]
    x = input.detach().reshape(-1, depth)
    t = target.detach().reshape(-1)
    w = linear_weight.detach()
    bias = None if linear_bias is None else linear_bias.detach()
    need = (need[0], need[1], need[2] and bias is not None)
    rows, classes = x.shape[0], w.shape[0]
    dt = input.dtype
    if x.device.type == "cuda":
        chunk = _np_linear._chunk_rows(chunk_size, rows, classes, x.element_size())
        loss, gx, gw, gb = _cuda_loop(x.contiguous(), w.contiguous(), t.contiguous(), bias,
                                      weight, ignore_index, red, eps, z, cap, chunk, need,
                                      row_scale)
    else:
        cdt = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
        chunk = _np_linear._chunk_rows(chunk_size, rows, classes, torch.finfo(cdt).bits // 8)
        scale = None if row_scale is None else row_scale.detach().reshape(-1).to(cdt)
        loss, gx, gw, gb = _cpu_loop(
            x.to(cdt).contiguous(), w.to(cdt).contiguous(), t.contiguous(),
            None if bias is None else bias.to(cdt), weight, ignore_index, red, eps, z, cap,
            chunk, need, scale)
        if not isinstance(loss, torch.Tensor):
            loss = torch.scalar_tensor(loss, dtype=cdt)
        loss = loss.to(dt)
        gx = None if gx is None else gx.to(dt)
        gw = None if gw is None else gw.to(dt)
        gb = None if gb is None else gb.to(dt)
    if red == 0:
        loss = loss.reshape(input.shape[:-1])
    if gx is not None:
        gx = gx.reshape(input.shape)
    return loss, gx, gw, gb


def _empty(like):
    return like.new_empty((0,))


@torch.library.custom_op("xentkit::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(input: torch.Tensor, linear_weight: torch.Tensor,
                            target: torch.Tensor, linear_bias: Optional[torch.Tensor],
                            weight: Optional[torch.Tensor], ignore_index: int, reduction: str,
                            label_smoothing: float, z_loss: float, softcap: Optional[float],
                            chunk_size: Optional[int]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_input, grad_linear_weight, grad_linear_bias); for "none" the gradients are
    empty (the backward op computes them), as is the bias gradient without a bias."""
    grads = reduction != "none"
    loss, gx, gw, gb = run(input, linear_weight, target, linear_bias, weight, ignore_index,
                           reduction, label_smoothing, z_loss, softcap, chunk_size,
                           need=(grads, grads, grads))
    return (loss, gx if gx is not None else _empty(input),
            gw if gw is not None else _empty(input), gb if gb is not None else _empty(input))


@torch.library.custom_op("xentkit::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_op(grad_loss: torch.Tensor, input: torch.Tensor,
                                     linear_weight: torch.Tensor, target: torch.Tensor,
                                     linear_bias: Optional[torch.Tensor],
                                     weight: Optional[torch.Tensor], ignore_index: int,
                                     label_smoothing: float, z_loss: float,
                                     softcap: Optional[float], chunk_size: Optional[int]
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of sum(grad_loss * per-row losses) (the backward pass of "none")."""
    _, gx, gw, gb = run(input, linear_weight, target, linear_bias, weight, ignore_index, "none",
                        label_smoothing, z_loss, softcap, chunk_size, row_scale=grad_loss)
    return gx, gw, gb if gb is not None else _empty(input)


@linear_cross_entropy_op.register_fake
def _fake(input, linear_weight, target, linear_bias, weight, ignore_index, reduction, *_):
    shape = tuple(input.shape[:-1]) if reduction == "none" else ()
    grads = reduction != "none"
    return (input.new_empty(shape), input.new_empty(input.shape if grads else (0,)),
            input.new_empty(linear_weight.shape if grads else (0,)),
            input.new_empty(linear_bias.shape if grads and linear_bias is not None else (0,)))


@linear_cross_entropy_backward_op.register_fake
def _fake_backward(grad_loss, input, linear_weight, target, linear_bias, *_):
    return (input.new_empty(input.shape), input.new_empty(linear_weight.shape),
            input.new_empty(linear_bias.shape if linear_bias is not None else (0,)))


def _setup(ctx, inputs, output):
    (input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
     label_smoothing, z_loss, softcap, chunk_size) = inputs
    ctx.reduction = reduction
    ctx.has_bias = linear_bias is not None
    ctx.mark_non_differentiable(*output[1:])
    if reduction == "none":
        ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
        ctx.options = (ignore_index, label_smoothing, z_loss, softcap, chunk_size)
    else:
        ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_loss, *_):
    if torch.is_grad_enabled():
        raise RuntimeError(_SECOND)
    if ctx.reduction == "none":
        input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
        gx, gw, gb = linear_cross_entropy_backward_op(grad_loss, input, linear_weight, target,
                                                      linear_bias, weight, *ctx.options)
    else:
        gx, gw, gb = (g * grad_loss for g in ctx.saved_tensors)
    return (gx, gw, None, gb if ctx.has_bias else None) + (None,) * 7


linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup)


class LinearFused(torch.autograd.Function):
    """The eager twin of the op: only the gradients some input needs are computed (a frozen
    head skips W's product), and none under no_grad (scoring)."""

    @staticmethod
    def forward(ctx, input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
                label_smoothing, z_loss, softcap, chunk_size):
        need = tuple(ctx.needs_input_grad[i] for i in (0, 1, 3))
        ctx.reduction = reduction
        ctx.need = need
        if reduction == "none" or not any(need):
            loss = run(input, linear_weight, target, linear_bias, weight, ignore_index,
                       reduction, label_smoothing, z_loss, softcap, chunk_size,
                       need=(False, False, False))[0]
            if reduction == "none" and any(need):
                ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
                ctx.options = (ignore_index, label_smoothing, z_loss, softcap, chunk_size)
            return loss
        loss, gx, gw, gb = run(input, linear_weight, target, linear_bias, weight, ignore_index,
                               reduction, label_smoothing, z_loss, softcap, chunk_size,
                               need=need)
        ctx.save_for_backward(gx, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError(_SECOND)
        if ctx.reduction == "none":
            input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
            _, gx, gw, gb = run(input, linear_weight, target, linear_bias, weight,
                                ctx.options[0], "none", *ctx.options[1:], need=ctx.need,
                                row_scale=grad_loss)
        else:
            scalar_one = grad_loss.device.type == "cpu" and grad_loss.item() == 1.0
            gx, gw, gb = (None if g is None else (g if scalar_one else g * grad_loss)
                          for g in ctx.saved_tensors)
        return (gx, gw, None, gb) + (None,) * 7


def _check(input, linear_weight, target, linear_bias, weight, reduction, chunk_size):
    for name, value in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        _bridge.check_tensor(value, name)
    for name, value in (("linear_bias", linear_bias), ("weight", weight)):
        _bridge.check_tensor(value, name, allow_none=True)
    if not input.is_floating_point():
        raise TypeError(f"input: expected a floating tensor (float16, bfloat16, float32, "
                        f"float64), got {input.dtype}")
    if input.ndim < 1:
        raise ValueError(f"input: expected a tensor of shape (..., D), got shape "
                         f"{tuple(input.shape)}")
    if linear_weight.ndim != 2:
        raise ValueError(f"linear_weight: expected a 2-D tensor of shape (V, D), got shape "
                         f"{tuple(linear_weight.shape)}")
    if linear_weight.dtype != input.dtype:
        raise TypeError(f"linear_weight: expected the input's dtype {input.dtype}, got "
                        f"{linear_weight.dtype}")
    classes, depth = linear_weight.shape
    if input.shape[-1] != depth:
        raise ValueError(
            f"linear_weight: expected shape ({classes}, {input.shape[-1]}) for input of shape "
            f"{tuple(input.shape)} (its last dimension is D), got shape "
            f"{tuple(linear_weight.shape)}")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(
            f"target: expected class indices of shape {tuple(input.shape[:-1])} for input of "
            f"shape {tuple(input.shape)}, got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target: expected class indices of an integer dtype, got "
                        f"{target.dtype}")
    if linear_bias is not None and tuple(linear_bias.shape) != (classes,):
        raise ValueError(f"linear_bias: expected shape ({classes},) (one bias per class), got "
                         f"shape {tuple(linear_bias.shape)}")
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(f"weight: expected shape ({classes},) (one weight per class), got "
                         f"shape {tuple(weight.shape)}")
    for name, value in (("linear_weight", linear_weight), ("target", target),
                        ("linear_bias", linear_bias), ("weight", weight)):
        if value is not None and value.device != input.device:
            raise ValueError(f"{name}: expected a tensor on the input's device {input.device}, "
                             f"got a tensor on {value.device}")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")
    if chunk_size is not None:
        _np_linear._chunk_rows(chunk_size, 1, 1, 1)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("linear_cross_entropy: weight requires grad, but xentkit.torch does "
                           "not differentiate with respect to the class weights; pass "
                           "weight.detach()")


def _eager(input):
    return (not torch.compiler.is_compiling() and type(input) in (torch.Tensor,
                                                                     torch.nn.Parameter)
            and input.device.type in ("cpu", "cuda"))


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None):
    """``torch.nn.functional.linear_cross_entropy`` (class-index targets) without the N x V
    logits: the loss of ``cross_entropy(input @ linear_weight.T + linear_bias, target)``, with
    gradients for input, linear_weight and linear_bias. input (..., D), linear_weight (V, D),
    target of shape ``input.shape[:-1]``; z_loss and softcap as :func:`cross_entropy`;
    chunk_size rows per chunk (None: chunks of at most 96 MiB of logits, see
    :func:`xentkit.linear_cross_entropy`)."""
    _check(input, linear_weight, target, linear_bias, weight, reduction, chunk_size)
    if ignore_index is None:
        ignore_index = -100
    args = (input, linear_weight, target, linear_bias, weight, int(ignore_index), reduction,
            float(label_smoothing), float(z_loss), None if softcap is None else float(softcap),
            None if chunk_size is None else int(chunk_size))
    if _eager(input):
        return LinearFused.apply(*args)
    return linear_cross_entropy_op(*args)[0]


class LinearCrossEntropyLoss(torch.nn.Module):
    """A classifier head and its loss in one module: ``self.linear`` is an ``nn.Linear(in_features,
    num_classes, bias=bias)`` and ``forward(input, target)`` is :func:`linear_cross_entropy`
    over its weight and bias. The state_dict has ``torch.nn.LinearCrossEntropyLoss``'s names
    (``linear.weight``, ``linear.bias``, and ``weight`` for class weights), so either loads the
    other's."""

    def __init__(self, in_features, num_classes, *, bias=False, device=None, dtype=None,
                 reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0,
                 z_loss=0.0, softcap=None, chunk_size=None):
        super().__init__()
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight: expected shape ({num_classes},) (one weight per class), "
                             f"got shape {tuple(weight.shape)}")
        if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got "
                             f"{reduction!r}")
        self.register_buffer("weight", weight)
        self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device,
                                      dtype=dtype)
        self.in_features = in_features
        self.num_classes = num_classes
        self.reduction = reduction
        self.ignore_index = -100 if ignore_index is None else ignore_index
        self.label_smoothing = _np_linear._smoothing(label_smoothing)
        self.z_loss = _np_linear._z_loss(z_loss)
        _np_linear._softcap(softcap)
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(self, input, target):
        return linear_cross_entropy(input, self.linear.weight, target,
                                    linear_bias=self.linear.bias, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, chunk_size=self.chunk_size)

    def extra_repr(self):
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"reduction={self.reduction!r}")
