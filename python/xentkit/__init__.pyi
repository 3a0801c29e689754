from typing import Any, Literal, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_DiffArg = Union[bool, None, npt.NDArray[np.floating[Any]]]

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
    diff: _DiffArg = ...,
) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]]]: ...
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
    prob: Literal[False] = ...,
) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]]]: ...
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
    prob: Literal[True],
) -> Tuple[float, Optional[npt.NDArray[np.floating[Any]]], npt.NDArray[np.floating[Any]]]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def cuda_available() -> bool: ...
def cuda_built() -> bool: ...
