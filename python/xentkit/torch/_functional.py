"""``torch.nn.functional``-style entry points of xentkit.torch.

Eager calls on plain CPU/CUDA tensors go through :class:`~xentkit.torch._ops.Fused`; under
``torch.compile``/``torch.export`` (and for fake or meta tensors) the registered ops
``torch.ops.xentkit.*`` are called, so tracing sees one opaque op with a fake kernel.
"""

from __future__ import annotations

import inspect

import torch

import xentkit as _xk

from . import _bridge, _ops

_REDUCTIONS = ("none", "mean", "sum")
_CE_PARAMETERS = inspect.signature(_xk.cross_entropy).parameters


def _eager(input):
    return (not torch.compiler.is_compiling() and type(input) in (torch.Tensor,
                                                                     torch.nn.Parameter)
            and input.device.type in ("cpu", "cuda"))


_SMALL_REDUCTIONS = {"mean": 1, "sum": 2}
_SMALL_DTYPES = (torch.float32, torch.float64)


def _small(input, target):
    """The case of the binding's short path, on an eager CPU call that needs the gradient."""
    return (type(input) is torch.Tensor and type(target) is torch.Tensor
            and input.dtype in _SMALL_DTYPES and target.dtype == torch.int64
            and input.device.type == "cpu" and target.device.type == "cpu"
            and input.ndim == 2 and target.ndim == 1 and input.requires_grad
            and not target.requires_grad and input.is_contiguous() and target.is_contiguous()
            and target.shape[0] == input.shape[0] and input.numel() > 0
            and torch.is_grad_enabled() and not torch.compiler.is_compiling())


def _reduction(reduction):
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def _input(input, name="input"):
    _bridge.check_tensor(input, name)
    if not input.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor (float16, bfloat16, float32, "
                        f"float64), got {input.dtype}")
    return input


def _no_grad_for(function, **tensors):
    """Gradients flow to the input only: a target or weight that requires grad would silently
    get none, so it raises instead."""
    if not torch.is_grad_enabled():
        return
    for name, value in tensors.items():
        _bridge.check_tensor(value, name, allow_none=True)
        if value is not None and value.requires_grad:
            raise RuntimeError(
                f"{function}: {name} requires grad, but xentkit.torch differentiates with "
                f"respect to the input only; pass {name}.detach()")


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def _loss(name, body, op, inplace, input, *args):
    if _eager(input):
        return _ops.Fused.apply(name, body, inplace, input, *args)
    return op(input, *args)[0]


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, inplace_grad=False):
    """``torch.nn.functional.cross_entropy`` as an autograd operation (same arguments and
    results), with xentkit's additions:

    z_loss : float >= 0. Adds ``z_loss * logsumexp(x)**2`` per non-ignored position, weighted
        and reduced as that position's cross-entropy term (SPEC 1.3b).
    softcap : None or > 0. Replaces each logit by ``softcap * tanh(x / softcap)`` first.
    inplace_grad : bool. Write the gradient into ``input``'s own storage instead of a new
        buffer: saves one logits-sized allocation when the logits are not needed after the loss
        (e.g. the output of the model's last layer). ``input`` must not be a leaf that requires
        grad; reading ``input`` afterwards gives the gradient, not the logits, and an autograd
        node that saved the logits makes backward raise (the version counter is bumped). Under
        ``torch.compile`` the functional op is used instead (the compiler owns the buffers).

    Class indices or class probabilities as targets; the gradient comes from the forward pass.
    """
    if (weight is None and ignore_index == -100 and label_smoothing == 0.0 and z_loss == 0.0
            and softcap is None and inplace_grad is False and _small(input, target)):
        red = _SMALL_REDUCTIONS.get(reduction)
        if red is not None:
            return _ops.SmallCrossEntropy.apply(input, target, red)
    _input(input)
    _no_grad_for("cross_entropy", target=target, weight=weight)
    options = (int(ignore_index), _reduction(reduction), _real(label_smoothing, "label_smoothing"),
               _real(z_loss, "z_loss"), None if softcap is None else _real(softcap, "softcap"))
    for name, value, default in (("z_loss", options[3], 0.0), ("softcap", options[4], None)):
        if value != default and name not in _CE_PARAMETERS:
            raise NotImplementedError(f"cross_entropy: {name}={value!r} is not computed by this "
                                      f"version of xentkit (only {name}={default!r})")
    inplace = _inplace(inplace_grad, input)
    return _loss("cross_entropy", _ops.cross_entropy_body, _ops.cross_entropy_op, inplace, input,
                 target, weight, *options)


def _inplace(inplace_grad, input):
    if not isinstance(inplace_grad, bool):
        raise TypeError(f"inplace_grad: expected True or False, got {inplace_grad!r}")
    if inplace_grad and input.is_leaf and input.requires_grad:
        raise RuntimeError(
            "inplace_grad=True: the input is a leaf tensor that requires grad, whose storage "
            "autograd must not see overwritten; pass the output of a layer, or inplace_grad=False")
    return inplace_grad


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):
    """``torch.nn.functional.nll_loss`` (the input holds log-probabilities)."""
    _input(input)
    _no_grad_for("nll_loss", target=target, weight=weight)
    return _loss("nll_loss", _ops.nll_loss_body, _ops.nll_loss_op, False, input, target, weight,
                 int(ignore_index), _reduction(reduction))


def binary_cross_entropy(input, target, weight=None, *, reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy`` (the input holds probabilities; values
    outside [0, 1] raise ValueError as in the NumPy API)."""
    _input(input)
    _no_grad_for("binary_cross_entropy", target=target, weight=weight)
    return _loss("binary_cross_entropy", _ops.binary_cross_entropy_body,
                 _ops.binary_cross_entropy_op, False, input, target, weight,
                 _reduction(reduction))


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction="mean",
                                     pos_weight=None, inplace_grad=False):
    """``torch.nn.functional.binary_cross_entropy_with_logits``; ``inplace_grad`` as in
    :func:`cross_entropy`."""
    _input(input)
    _no_grad_for("binary_cross_entropy_with_logits", target=target, weight=weight,
                 pos_weight=pos_weight)
    return _loss("binary_cross_entropy_with_logits", _ops.binary_cross_entropy_with_logits_body,
                 _ops.binary_cross_entropy_with_logits_op, _inplace(inplace_grad, input), input,
                 target, weight, pos_weight, _reduction(reduction))


def _caffe_options(ignore_label, normalization, normalize):
    if ignore_label is not None:
        ignore_label = int(ignore_label)
    if normalization is not None and not isinstance(normalization, str):
        raise TypeError("normalization: expected one of 'full', 'valid', 'batch_size', 'none' "
                        f"or None, got {normalization!r}")
    if normalize is not None and not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected True, False or None, got {normalize!r}")
    return ignore_label, normalization, normalize


def softmax_with_loss(scores, labels, *, axis=1, ignore_label=None, normalization=None,
                      normalize=None):
    """Caffe's SoftmaxWithLoss layer: a 0-d loss tensor (unweighted, as Caffe's top blob);
    backward gives Caffe's diff times the upstream gradient (so a loss weight is a plain
    multiplication of the loss)."""
    _input(scores, "scores")
    _no_grad_for("softmax_with_loss", labels=labels)
    return _loss("softmax_with_loss", _ops.softmax_with_loss_body, _ops.softmax_with_loss_op,
                 False, scores, labels, int(axis),
                 *_caffe_options(ignore_label, normalization, normalize))


def sigmoid_cross_entropy_loss(scores, targets, *, ignore_label=None, normalization=None,
                               normalize=None):
    """Caffe's SigmoidCrossEntropyLoss layer: a 0-d loss tensor; backward gives Caffe's diff
    times the upstream gradient."""
    _input(scores, "scores")
    _no_grad_for("sigmoid_cross_entropy_loss", targets=targets)
    return _loss("sigmoid_cross_entropy_loss", _ops.sigmoid_cross_entropy_loss_body,
                 _ops.sigmoid_cross_entropy_loss_op, False, scores, targets,
                 *_caffe_options(ignore_label, normalization, normalize))


def _dim(dim):
    if dim is None:
        raise TypeError("dim: expected an integer (PyTorch's implicit dim choice is deprecated), "
                        "got None")
    return int(dim)


def log_softmax(input, dim=-1):
    """``torch.nn.functional.log_softmax`` (differentiable, higher derivatives included)."""
    return _ops.log_softmax_op(_input(input), _dim(dim))


def softmax(input, dim=-1):
    """``torch.nn.functional.softmax`` (differentiable, higher derivatives included)."""
    return _ops.softmax_op(_input(input), _dim(dim))


