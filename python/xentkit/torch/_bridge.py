"""Tensors in, arrays to the NumPy API, tensors out.

CPU tensors reach the CPU kernels as NumPy arrays over their own memory (bfloat16 as
``ml_dtypes.bfloat16``); CUDA tensors are handed to the NumPy API as they are (it reads them
through ``__cuda_array_interface__``/DLPack) with PyTorch's current stream, and come back as
tensors, so nothing synchronises the host.
"""

from __future__ import annotations

import torch

_BFLOAT16 = None


def bfloat16_dtype():
    """NumPy's bfloat16 (from ml_dtypes, a dependency of the ``torch`` extra)."""
    global _BFLOAT16
    if _BFLOAT16 is None:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(
                "bfloat16 CPU tensors need the ml_dtypes package: pip install \"xentkit[torch]\" "
                "(or pip install ml_dtypes)") from None
        _BFLOAT16 = ml_dtypes.bfloat16
    return _BFLOAT16


def check_tensor(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def array(t, name, like=None):
    """`t` for the NumPy API: a NumPy view of a CPU tensor, the tensor itself on CUDA. `like`
    (the main input) fixes the device every other tensor must be on."""
    if t is None:
        return None
    t = check_tensor(t, name).detach()
    if like is not None and t.device != like.device:
        raise ValueError(f"{name}: expected a tensor on the input's device {like.device}, got "
                         f"a tensor on {t.device}")
    kind = t.device.type
    if kind == "cpu":
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(bfloat16_dtype())
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        return t.numpy()
    if kind == "cuda":
        return t
    raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a tensor on {t.device}")


def tensor(value, like):
    """A NumPy API result (array, DeviceArray-converted tensor or Python float) as a tensor of
    `like`'s dtype and device."""
    if isinstance(value, torch.Tensor):
        return value if value.dtype == like.dtype else value.to(like.dtype)
    if isinstance(value, float):
        return torch.scalar_tensor(value, dtype=like.dtype, device=like.device)
    if _BFLOAT16 is not None and value.dtype == _BFLOAT16:
        return torch.from_numpy(value.view("int16")).view(torch.bfloat16)
    out = torch.from_numpy(value)
    return out if out.dtype == like.dtype else out.to(like.dtype)


def stream_kw(input):
    """``stream=`` for a CUDA input: PyTorch's current stream on the input's device."""
    if input.device.type == "cuda":
        return {"stream": torch.cuda.current_stream(input.device).cuda_stream}
    return {}
