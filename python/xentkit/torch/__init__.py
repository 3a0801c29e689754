"""xentkit's losses as PyTorch autograd operations on ``torch.Tensor`` (CPU and CUDA).

The functions carry ``torch.nn.functional``'s names, arguments and results; the modules are
drop-in replacements of ``torch.nn``'s loss modules::

    import xentkit.torch as xt

    loss = xt.cross_entropy(logits, target)          # as torch.nn.functional.cross_entropy
    loss.backward()                                  # the gradient came from the forward pass
    criterion = xt.CrossEntropyLoss(label_smoothing=0.1)

Each loss is one operation registered with ``torch.library`` in the ``xentkit`` namespace
(``torch.ops.xentkit.cross_entropy`` ...), with a fake kernel and an autograd formula, so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace it without a graph break. The
forward pass computes the loss and its gradient in one fused pass and keeps only the gradient;
the backward pass scales it by the upstream gradient.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "xentkit.torch needs PyTorch, which is not installed: pip install \"xentkit[torch]\" "
        "(or pip install torch)") from err

from ._functional import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                          log_softmax, nll_loss, sigmoid_cross_entropy_loss, softmax,
                          softmax_with_loss)
from ._linear import LinearCrossEntropyLoss, linear_cross_entropy
from ._modules import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "NLLLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "log_softmax",
    "nll_loss",
    "sigmoid_cross_entropy_loss",
    "softmax",
    "softmax_with_loss",
]
