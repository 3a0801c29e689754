from typing import Any, Literal, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_DiffArg = Union[bool, None, npt.NDArray[np.floating[Any]]]

class CudaUnavailableError(RuntimeError): ...

class DeviceArray:
    shape: Tuple[int, ...]
    dtype: str
    device: int
    itemsize: int
    @property
    def ptr(self) -> int: ...
    @property
    def stream(self) -> int: ...
    @property
    def __cuda_array_interface__(self) -> dict: ...
    def __dlpack__(self, *, stream: Optional[int] = ..., max_version: Any = ..., dl_device: Any = ..., copy: Optional[bool] = ...) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

class LabelError(ValueError, IndexError):
    value: Union[int, float, str, None]
    index: Optional[int]
    def __init__(self, message: str, value: Any = ..., index: Optional[int] = ...) -> None: ...

def sigmoid_cross_entropy_loss(
    scores: npt.ArrayLike,
    targets: npt.ArrayLike,
    *,
    ignore_label: Optional[int] = ...,
    normalization: Optional[str] = ...,
    normalize: Optional[bool] = ...,
    loss_weight: float = ...,
    diff: _DiffArg = ..., stream: Any = ..., sync: bool = ...) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]]]: ...
@overload
def softmax_with_loss(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = ...,
    ignore_label: Optional[int] = ...,
    normalization: Optional[str] = ...,
    normalize: Optional[bool] = ...,
    loss_weight: float = ...,
    diff: _DiffArg = ...,
    prob: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]]]: ...
@overload
def softmax_with_loss(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = ...,
    ignore_label: Optional[int] = ...,
    normalization: Optional[str] = ...,
    normalize: Optional[bool] = ...,
    loss_weight: float = ...,
    diff: _DiffArg = ...,
    prob: Literal[True], stream: Any = ..., sync: bool = ...) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]], npt.NDArray[np.floating[Any]]]: ...

_Array = npt.NDArray[np.floating[Any]]
_Loss = Union[float, _Array]  # a Python float for "mean"/"sum", an array for "none"
_Reduction = Literal["none", "mean", "sum"]
_GradArg = Union[Literal[True], _Array]

@overload
def binary_cross_entropy(input: npt.ArrayLike, target: npt.ArrayLike,
                         weight: Optional[npt.ArrayLike] = ..., *, reduction: _Reduction = ...,
                         grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Loss: ...
@overload
def binary_cross_entropy(input: npt.ArrayLike, target: npt.ArrayLike,
                         weight: Optional[npt.ArrayLike] = ..., *, reduction: _Reduction = ...,
                         grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Loss, _Array]: ...
@overload
def binary_cross_entropy_with_logits(input: npt.ArrayLike, target: npt.ArrayLike,
                                     weight: Optional[npt.ArrayLike] = ..., *,
                                     reduction: _Reduction = ...,
                                     pos_weight: Optional[npt.ArrayLike] = ...,
                                     grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Loss: ...
@overload
def binary_cross_entropy_with_logits(input: npt.ArrayLike, target: npt.ArrayLike,
                                     weight: Optional[npt.ArrayLike] = ..., *,
                                     reduction: _Reduction = ...,
                                     pos_weight: Optional[npt.ArrayLike] = ...,
                                     grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Loss, _Array]: ...
@overload
def cross_entropy(input: npt.ArrayLike, target: npt.ArrayLike,
                  weight: Optional[npt.ArrayLike] = ..., *, ignore_index: int = ...,
                  reduction: _Reduction = ..., label_smoothing: float = ...,
                  z_loss: float = ..., softcap: Optional[float] = ...,
                  grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Loss: ...
@overload
def cross_entropy(input: npt.ArrayLike, target: npt.ArrayLike,
                  weight: Optional[npt.ArrayLike] = ..., *, ignore_index: int = ...,
                  reduction: _Reduction = ..., label_smoothing: float = ...,
                  z_loss: float = ..., softcap: Optional[float] = ...,
                  grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Loss, _Array]: ...
@overload
def linear_cross_entropy(input: npt.ArrayLike, linear_weight: npt.ArrayLike,
                         target: npt.ArrayLike, *, linear_bias: Optional[npt.ArrayLike] = ...,
                         weight: Optional[npt.ArrayLike] = ..., ignore_index: int = ...,
                         reduction: _Reduction = ..., label_smoothing: float = ...,
                         z_loss: float = ..., softcap: Optional[float] = ...,
                         chunk_size: Optional[int] = ..., grad: Literal[False] = ...) -> _Loss: ...
@overload
def linear_cross_entropy(input: npt.ArrayLike, linear_weight: npt.ArrayLike,
                         target: npt.ArrayLike, *, linear_bias: Optional[npt.ArrayLike] = ...,
                         weight: Optional[npt.ArrayLike] = ..., ignore_index: int = ...,
                         reduction: _Reduction = ..., label_smoothing: float = ...,
                         z_loss: float = ..., softcap: Optional[float] = ...,
                         chunk_size: Optional[int] = ..., grad: Literal[True]
                         ) -> Tuple[_Loss, _Array, _Array, Optional[_Array]]: ...
@overload
def nll_loss(input: npt.ArrayLike, target: npt.ArrayLike, weight: Optional[npt.ArrayLike] = ...,
             *, ignore_index: int = ..., reduction: _Reduction = ...,
             grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Loss: ...
@overload
def nll_loss(input: npt.ArrayLike, target: npt.ArrayLike, weight: Optional[npt.ArrayLike] = ...,
             *, ignore_index: int = ..., reduction: _Reduction = ...,
             grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Loss, _Array]: ...
def log_softmax(input: npt.ArrayLike, dim: int = ..., *, stream: Any = ..., sync: bool = ...) -> _Array: ...
def softmax(input: npt.ArrayLike, dim: int = ..., *, stream: Any = ..., sync: bool = ...) -> _Array: ...
@overload
def sigmoid_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, *,
                                      grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Array: ...
@overload
def sigmoid_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, *,
                                      grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Array, _Array]: ...
@overload
def softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike,
                                      axis: int = ..., *,
                                      grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Array: ...
@overload
def softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike,
                                      axis: int = ..., *,
                                      grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Array, _Array]: ...
@overload
def sparse_softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, *,
                                             grad: Literal[False] = ..., stream: Any = ..., sync: bool = ...) -> _Array: ...
@overload
def sparse_softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, *,
                                             grad: _GradArg, stream: Any = ..., sync: bool = ...) -> Tuple[_Array, _Array]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def simd_level() -> str: ...
def simd_levels_available() -> list[str]: ...
def set_simd_level(name: str) -> None: ...
def cuda_available() -> bool: ...
def cuda_built() -> bool: ...
def cmake_dir() -> str: ...
