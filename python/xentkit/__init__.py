"""xentkit: fast, exact cross-entropy losses with a C++ core.

Caffe's loss layers (:func:`sigmoid_cross_entropy_loss`, :func:`softmax_with_loss`) on NumPy
arrays: the loss and its gradient ("diff") from one fused pass, inputs read without a copy.
"""

from __future__ import annotations

from . import _core
from ._caffe import sigmoid_cross_entropy_loss, softmax_with_loss
from ._errors import LabelError

__version__ = _core.__version__

_core._register_label_error(LabelError)

__all__ = [
    "LabelError",
    "cuda_available",
    "cuda_built",
    "get_num_threads",
    "set_num_threads",
    "sigmoid_cross_entropy_loss",
    "softmax_with_loss",
]


def get_num_threads() -> int:
    """Threads the CPU kernels use for large inputs (XENTKIT_NUM_THREADS, else all cores)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the thread count of the CPU kernels (n >= 1). Results do not depend on it."""
    import operator

    if isinstance(n, bool):
        raise TypeError(f"n: expected an integer >= 1, got {n!r}")
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected an integer >= 1, got {n!r}") from None
    if not 1 <= value <= 4096:
        raise ValueError(f"n: expected an integer in [1, 4096], got {value}")
    _core.set_num_threads(value)


def cuda_available() -> bool:
    """True when this build has the CUDA kernels and a CUDA device is usable."""
    return bool(_core.cuda_built()) and _core.cuda_device_count() > 0


def cuda_built() -> bool:
    """True when this build compiled the CUDA kernels (whether or not a device is present)."""
    return bool(_core.cuda_built())
