"""The exceptions of xentkit."""

from __future__ import annotations

__all__ = ["CudaUnavailableError", "LabelError"]


def _parse_value(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        try:
            return float(text)
        except (TypeError, ValueError):
            return text


class LabelError(ValueError, IndexError):
    """A class label outside ``[0, C)`` that is not the ignored label.

    Both a :class:`ValueError` (the value is wrong) and an :class:`IndexError` (what PyTorch
    raises). ``value`` is the label as stored and ``index`` its flat index in the label array.
    """

    def __init__(self, message, value=None, index=None):
        super().__init__(message)
        self.value = _parse_value(value) if isinstance(value, str) else value
        self.index = index

    def __reduce__(self):
        return (type(self), (str(self), self.value, self.index))


class CudaUnavailableError(RuntimeError):
    """A CUDA device array was passed, but this build of xentkit has no CUDA kernels
    (XENTKIT_USE_CUDA=OFF) or no CUDA device is usable (no driver, no device). The message names
    the argument and the reason."""
