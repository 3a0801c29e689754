"""xentkit: fast, exact cross-entropy losses with a C++ core.

On NumPy arrays, the loss and its gradient from one fused pass, inputs read without a copy:

* Caffe's loss layers: :func:`sigmoid_cross_entropy_loss`, :func:`softmax_with_loss`;
* PyTorch's functions: :func:`binary_cross_entropy`, :func:`binary_cross_entropy_with_logits`,
  :func:`cross_entropy`, :func:`nll_loss`, :func:`log_softmax`, :func:`softmax`, and the fused
  :func:`linear_cross_entropy` (a classifier head's loss without the N x V logits);
* TensorFlow's: :func:`sigmoid_cross_entropy_with_logits`,
  :func:`softmax_cross_entropy_with_logits`, :func:`sparse_softmax_cross_entropy_with_logits`.

Also: :mod:`xentkit.dask` (the same losses over dask arrays chunked along the batch axis, with
the ``dask`` extra), the ``xentkit`` command line (``demo``, ``eval`` over .npy files) and the
C++ SDK shipped in the package (:func:`cmake_dir`).
"""

from __future__ import annotations

from . import _core
from ._caffe import sigmoid_cross_entropy_loss, softmax_with_loss
from ._errors import CudaUnavailableError, LabelError
from ._tf import (sigmoid_cross_entropy_with_logits, softmax_cross_entropy_with_logits,
                  sparse_softmax_cross_entropy_with_logits)
from ._functional import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                     log_softmax, nll_loss, softmax)
from ._linear import linear_cross_entropy

__version__ = _core.__version__

_core._register_label_error(LabelError)
_core._register_unavailable_error(CudaUnavailableError)
DeviceArray = _core.DeviceArray

__all__ = [
    "CudaUnavailableError",
    "DeviceArray",
    "LabelError",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cmake_dir",
    "cross_entropy",
    "cuda_available",
    "cuda_built",
    "get_num_threads",
    "linear_cross_entropy",
    "simd_level",
    "simd_levels_available",
    "log_softmax",
    "nll_loss",
    "set_num_threads",
    "set_simd_level",
    "sigmoid_cross_entropy_loss",
    "sigmoid_cross_entropy_with_logits",
    "softmax",
    "softmax_cross_entropy_with_logits",
    "softmax_with_loss",
    "sparse_softmax_cross_entropy_with_logits",
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


def simd_level() -> str:
    """The instruction set of the float32 CPU kernels: "avx512", "avx2", "baseline" (vector code
    for the compiler's default target) or "scalar" (the reference kernels only)."""
    return _core.simd_level()


def simd_levels_available() -> list[str]:
    """The levels this build and this CPU can run, best first ("scalar" last)."""
    return _core.simd_levels_available()


def set_simd_level(name: str) -> None:
    """Chooses the instruction set: "auto" (the best, the default) or one of
    :func:`simd_levels_available`. The XENTKIT_SIMD environment variable sets the initial level.
    Results may differ in the last bits between levels, never between thread counts."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {name!r}")
    _core.set_simd_level(name)


def cuda_available() -> bool:
    """True when this build has the CUDA kernels and they run on the current CUDA device (False
    where no device is visible, or none of the build's kernel images loads on it; a device call
    then raises CudaUnavailableError saying which)."""
    return (bool(_core.cuda_built()) and _core.cuda_device_count() > 0
            and not _core.device_kernel_problem())


def cuda_built() -> bool:
    """True when this build compiled the CUDA kernels (whether or not a device is present)."""
    return bool(_core.cuda_built())


def cmake_dir() -> str:
    """The directory holding ``xentkitConfig.cmake`` of the C++ SDK shipped in this package
    (headers, static library, exported target ``xentkit::xentkit``), for
    ``-Dxentkit_DIR=...`` or ``CMAKE_PREFIX_PATH``. Raises FileNotFoundError when this
    installation has no SDK."""
    import os

    for root in __path__:
        candidate = os.path.join(os.path.abspath(root), "cmake")
        if os.path.isfile(os.path.join(candidate, "xentkitConfig.cmake")):
            return candidate
    raise FileNotFoundError(
        "xentkit: the C++ SDK (cmake/xentkitConfig.cmake) is not part of this installation "
        f"(searched {list(__path__)})")
