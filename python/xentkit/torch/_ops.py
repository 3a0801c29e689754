"""The losses as ``torch.library`` custom operations (namespace ``xentkit``), declared once.

Every loss op takes tensors and the loss's options and returns ``(loss, grad)``: the loss and the
gradient of the loss (for ``reduction="none"``: of the sum of the losses) with respect to the
input, both from one fused pass of the NumPy API's kernels. Its autograd formula saves only that
gradient and scales it by the upstream gradient (a scalar multiply for a reduced loss, a
broadcast one over the class dimension for ``"none"``). The same bodies serve eager calls
through :class:`Fused`, an ``autograd.Function`` that skips the dispatcher (a few tens of
microseconds a call, which is what a small batch costs), and can write the gradient into the
input's own storage.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.graph import increment_version

import xentkit as _xk
from xentkit import _core

from . import _bridge

_SECOND = ("xentkit.torch: the second derivative of {} is not supported (its backward pass "
           "only scales the gradient saved by the forward pass)")


def _fused(fn, input, others, options, out=None, want_grad=True, grad_name="grad"):
    """Runs NumPy API function `fn` on tensors: (loss, grad) as tensors of the input's dtype and
    device (grad None when not wanted; `out` when given, the tensor the gradient is written
    into)."""
    x = _bridge.array(input, "input")
    args = [_bridge.array(value, name, input) for name, value in others]
    options.update(_bridge.stream_kw(input))
    if not want_grad:
        options[grad_name] = False
        loss = fn(x, *args, **options)
        if grad_name == "diff":
            loss = loss[0]
        return _bridge.tensor(loss, input), None
    options[grad_name] = True if out is None else _bridge.array(out, "input")
    loss, grad = fn(x, *args, **options)
    return _bridge.tensor(loss, input), (out if out is not None else _bridge.tensor(grad, input))


# The bodies: tensors and options in, (loss, grad) out. `out` / `want_grad` serve the eager path.

def cross_entropy_body(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                       softcap, out=None, want_grad=True):
    options = {"ignore_index": ignore_index, "reduction": reduction,
               "label_smoothing": label_smoothing}
    if z_loss != 0.0:
        options["z_loss"] = z_loss
    if softcap is not None:
        options["softcap"] = softcap
    return _fused(_xk.cross_entropy, input, (("target", target), ("weight", weight)), options,
                  out, want_grad)


def nll_loss_body(input, target, weight, ignore_index, reduction, out=None, want_grad=True):
    return _fused(_xk.nll_loss, input, (("target", target), ("weight", weight)),
                  {"ignore_index": ignore_index, "reduction": reduction}, out, want_grad)


def binary_cross_entropy_body(input, target, weight, reduction, out=None, want_grad=True):
    return _fused(_xk.binary_cross_entropy, input, (("target", target), ("weight", weight)),
                  {"reduction": reduction}, out, want_grad)


def binary_cross_entropy_with_logits_body(input, target, weight, pos_weight, reduction, out=None,
                                          want_grad=True):
    return _fused(_xk.binary_cross_entropy_with_logits, input,
                  (("target", target), ("weight", weight)),
                  {"reduction": reduction,
                   "pos_weight": _bridge.array(pos_weight, "pos_weight", input)}, out, want_grad)


def softmax_with_loss_body(scores, labels, axis, ignore_label, normalization, normalize,
                           out=None, want_grad=True):
    return _fused(_xk.softmax_with_loss, scores, (("labels", labels),),
                  {"axis": axis, "ignore_label": ignore_label, "normalization": normalization,
                   "normalize": normalize}, out, want_grad, grad_name="diff")


def sigmoid_cross_entropy_loss_body(scores, targets, ignore_label, normalization, normalize,
                                    out=None, want_grad=True):
    return _fused(_xk.sigmoid_cross_entropy_loss, scores, (("targets", targets),),
                  {"ignore_label": ignore_label, "normalization": normalization,
                   "normalize": normalize}, out, want_grad, grad_name="diff")


def _scale(grad, grad_loss, eager=False):
    """The input's gradient: the saved `grad` times the upstream gradient of the loss."""
    if grad_loss.ndim == 0:
        if eager and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return grad  # loss.backward() on the loss itself: nothing to scale
        return grad * grad_loss
    if grad_loss.ndim != grad.ndim:  # per-position losses: broadcast over the class dimension
        grad_loss = grad_loss.unsqueeze(1)
    return grad * grad_loss


def _no_second_derivative(name):
    if torch.is_grad_enabled():
        raise RuntimeError(_SECOND.format(name))


# The ops. Each schema comes from the annotations of its thin wrapper.

def _loss_shape_positions(input, reduction):
    if reduction != "none":
        return ()
    return tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.ndim > 1 else ()


def _loss_shape_elements(input, reduction):
    return tuple(input.shape) if reduction == "none" else ()


def _register(name, body, loss_shape):
    """Fake kernel and autograd formula for the loss op `body` (a CustomOpDef)."""

    def fake(input, *args):
        shape = loss_shape(input, *args)
        return (input.new_empty(shape),
                torch.empty(input.shape, dtype=input.dtype, device=input.device))

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.nargs = len(inputs)

    def backward(ctx, grad_loss, _grad_of_grad):
        _no_second_derivative(name)
        (grad,) = ctx.saved_tensors
        return (_scale(grad, grad_loss),) + (None,) * (ctx.nargs - 1)

    body.register_fake(fake)
    body.register_autograd(backward, setup_context=setup_context)
    return body


@torch.library.custom_op("xentkit::cross_entropy", mutates_args=())
def cross_entropy_op(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                     ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                     softcap: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return cross_entropy_body(input, target, weight, ignore_index, reduction, label_smoothing,
                              z_loss, softcap)


@torch.library.custom_op("xentkit::nll_loss", mutates_args=())
def nll_loss_op(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                ignore_index: int, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    return nll_loss_body(input, target, weight, ignore_index, reduction)


@torch.library.custom_op("xentkit::binary_cross_entropy", mutates_args=())
def binary_cross_entropy_op(input: torch.Tensor, target: torch.Tensor,
                            weight: Optional[torch.Tensor],
                            reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    return binary_cross_entropy_body(input, target, weight, reduction)


@torch.library.custom_op("xentkit::binary_cross_entropy_with_logits", mutates_args=())
def binary_cross_entropy_with_logits_op(
        input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
        pos_weight: Optional[torch.Tensor], reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    return binary_cross_entropy_with_logits_body(input, target, weight, pos_weight, reduction)


@torch.library.custom_op("xentkit::softmax_with_loss", mutates_args=())
def softmax_with_loss_op(scores: torch.Tensor, labels: torch.Tensor, axis: int,
                         ignore_label: Optional[int], normalization: Optional[str],
                         normalize: Optional[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    return softmax_with_loss_body(scores, labels, axis, ignore_label, normalization, normalize)


@torch.library.custom_op("xentkit::sigmoid_cross_entropy_loss", mutates_args=())
def sigmoid_cross_entropy_loss_op(scores: torch.Tensor, targets: torch.Tensor,
                                  ignore_label: Optional[int], normalization: Optional[str],
                                  normalize: Optional[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    return sigmoid_cross_entropy_loss_body(scores, targets, ignore_label, normalization,
                                           normalize)


_register("cross_entropy", cross_entropy_op,
          lambda x, t, w, ii, red, *_: _loss_shape_positions(x, red))
_register("nll_loss", nll_loss_op, lambda x, t, w, ii, red: _loss_shape_positions(x, red))
_register("binary_cross_entropy", binary_cross_entropy_op,
          lambda x, t, w, red: _loss_shape_elements(x, red))
_register("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits_op,
          lambda x, t, w, pw, red: _loss_shape_elements(x, red))
_register("softmax_with_loss", softmax_with_loss_op, lambda *_: ())
_register("sigmoid_cross_entropy_loss", sigmoid_cross_entropy_loss_op, lambda *_: ())


class Fused(torch.autograd.Function):
    """The eager twin of the loss ops: ``Fused.apply(name, body, inplace, input, *args)``.

    ``inplace=True`` writes the gradient into the input's storage (the input's version counter
    is bumped, so an autograd node that saved the input, or a later in-place change of it, makes
    backward raise instead of computing with overwritten values). When no gradient is needed
    (grad mode off, or the input does not require grad) only the loss is computed."""

    @staticmethod
    def forward(ctx, name, body, inplace, input, *args):
        ctx.name, ctx.nargs = name, len(args)
        if not ctx.needs_input_grad[3]:
            return body(input, *args, want_grad=False)[0]
        loss, grad = body(input, *args, out=input if inplace else None)
        if inplace:
            increment_version(input)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        _no_second_derivative(ctx.name)
        (grad,) = ctx.saved_tensors
        return (None, None, None, _scale(grad, grad_loss, eager=True)) + (None,) * ctx.nargs


class SmallCrossEntropy(torch.autograd.Function):
    """The plainest eager cross_entropy (2-D contiguous float32/float64 CPU logits, int64
    targets, no option but the reduction), with nothing between autograd and the binding's short
    path: a small batch then costs what a trivial autograd.Function costs."""

    @staticmethod
    def forward(ctx, input, target, reduction):
        loss, grad = _core.cross_entropy_small(input.detach().numpy(), target.numpy(),
                                               reduction, True)
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.scalar_tensor(loss, dtype=input.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        _no_second_derivative("cross_entropy")
        (grad,) = ctx.saved_tensors
        return _scale(grad, grad_loss, eager=True), None, None


# log_softmax / softmax: the output is saved and the usual formulas give the input's gradient
# (they are torch operations, so higher derivatives work).

@torch.library.custom_op("xentkit::log_softmax", mutates_args=())
def log_softmax_op(input: torch.Tensor, dim: int) -> torch.Tensor:
    x = _bridge.array(input, "input")
    return _bridge.tensor(_xk.log_softmax(x, dim, **_bridge.stream_kw(input)), input)


@torch.library.custom_op("xentkit::softmax", mutates_args=())
def softmax_op(input: torch.Tensor, dim: int) -> torch.Tensor:
    x = _bridge.array(input, "input")
    return _bridge.tensor(_xk.softmax(x, dim, **_bridge.stream_kw(input)), input)


def _like(input, dim):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1]


def _wide(t):
    """16-bit tensors in float32 for the backward formulas (rounded once at the end)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _log_softmax_backward(ctx, grad):
    (out,) = ctx.saved_tensors
    g, o = _wide(grad), _wide(out)
    return (g - o.exp() * g.sum(ctx.dim, keepdim=True)).to(grad.dtype), None


def _softmax_backward(ctx, grad):
    (out,) = ctx.saved_tensors
    g, o = _wide(grad), _wide(out)
    return (o * (g - (g * o).sum(ctx.dim, keepdim=True))).to(grad.dtype), None


log_softmax_op.register_fake(_like)
softmax_op.register_fake(_like)
log_softmax_op.register_autograd(_log_softmax_backward, setup_context=_save_output)
softmax_op.register_autograd(_softmax_backward, setup_context=_save_output)
