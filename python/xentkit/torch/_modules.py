"""Loss modules: drop-in replacements of ``torch.nn``'s, with the same constructor arguments."""

from __future__ import annotations

import torch
from torch.nn import _reduction as _legacy

from . import _functional as F


def _reduction(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        return _legacy.legacy_get_string(size_average, reduce)
    return reduction


class _WeightedLoss(torch.nn.Module):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = _reduction(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """``torch.nn.CrossEntropyLoss`` on :func:`xentkit.torch.cross_entropy`, plus ``z_loss``,
    ``softcap`` and ``inplace_grad`` (see there)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                 inplace_grad=False):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_grad = inplace_grad

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap,
                               inplace_grad=self.inplace_grad)


class NLLLoss(_WeightedLoss):
    """``torch.nn.NLLLoss`` on :func:`xentkit.torch.nll_loss`."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean"):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """``torch.nn.BCELoss`` on :func:`xentkit.torch.binary_cross_entropy`."""

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    """``torch.nn.BCEWithLogitsLoss`` on :func:`xentkit.torch.binary_cross_entropy_with_logits`
    (plus ``inplace_grad``)."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean",
                 pos_weight=None, inplace_grad=False):
        super().__init__(weight, size_average, reduce, reduction)
        self.register_buffer("pos_weight", pos_weight)
        self.inplace_grad = inplace_grad

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  reduction=self.reduction,
                                                  pos_weight=self.pos_weight,
                                                  inplace_grad=self.inplace_grad)
