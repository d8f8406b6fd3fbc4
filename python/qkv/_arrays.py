"""How the qkv package takes arrays: NumPy arrays, PyTorch tensors or anything
with DLPack or the buffer protocol, read in place (never copied), plus the small
normalizations of options shared by every entry point."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple

import numpy as np

_DLPACK_CPU = 1  # DLDeviceType kDLCPU
_FLOAT32_VECTORS = ("alibi_slopes", "sinks")


def is_torch_tensor(x: Any) -> bool:
    # Looks torch up without importing it: a tensor means torch is loaded.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_array(x: Any) -> bool:
    if hasattr(x, "__dlpack__"):
        return True
    try:
        memoryview(x)
    except TypeError:
        return False
    return True


def as_numpy(x: Any, name: str) -> np.ndarray:
    """A NumPy view of an array (DLPack or buffer protocol), never a copy."""
    if isinstance(x, np.ndarray):
        return x
    if not is_array(x):
        raise TypeError(
            f"{name} must be an array (NumPy, PyTorch or anything with DLPack), "
            f"not {type(x).__name__}"
        )
    if hasattr(x, "__dlpack_device__") and x.__dlpack_device__()[0] != _DLPACK_CPU:
        raise ValueError(f"{name} must be on the CPU (DLPack device {x.__dlpack_device__()})")
    return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)


def as_array(x: Any) -> Any:
    """Arrays pass through as they are; None stays None; anything else (a
    list, a scalar) becomes a NumPy array, whose dtype the binding checks."""
    if x is None or is_array(x):
        return x
    return np.asarray(x)


def float32_vector(x: Any) -> Optional[np.ndarray]:
    return None if x is None else np.ascontiguousarray(x, dtype=np.float32)


def prepare(op: str, **arrays: Any) -> Tuple[Callable[..., Any], Any, Tuple[Any, ...]]:
    """``(empty, float32, arrays)``: the arrays (in order) as the binding takes
    them, and how to allocate results in the framework of the first one.

    When the first array is a PyTorch tensor, every tensor goes through
    ``qkv.torch._prepare`` (CPU and grad checks, detached views) and results
    are tensors; otherwise arrays become NumPy views. ``alibi_slopes`` and
    ``sinks`` become float32 (a small copy); None stays None.
    """
    first = next(iter(arrays.values()))
    if is_torch_tensor(first):
        from . import torch as qkv_torch  # torch is already imported: first is a tensor

        tensors = qkv_torch._prepare(op, **arrays)
        return qkv_torch.torch.empty, qkv_torch.torch.float32, tensors
    converted = tuple(
        None if x is None else float32_vector(x) if name in _FLOAT32_VECTORS else as_numpy(x, name)
        for name, x in arrays.items()
    )
    return np.empty, np.float32, converted


def int_array(x: Any, name: str, dtype: Any) -> np.ndarray:
    """``x`` (an int, a sequence, or an integer array of NumPy, PyTorch or
    DLPack) as a contiguous NumPy array of ``dtype``: no copy when it already
    is one (an int32 tensor for cu_seqlens, say)."""
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":
        a = a.astype(dtype)  # np.asarray([]) is float64
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not {a.dtype}")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise ValueError(f"{name} has values outside the range of {np.dtype(dtype).name}")
    return np.asarray(a, dtype=dtype, order="C")  # np.ascontiguousarray would make 0-d 1-d


def window(window: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if window is None:
        return (-1, -1)
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (left, right), not {window!r}") from None
    return (int(left), int(right))


def threads(num_threads: Optional[int]) -> int:
    return 0 if num_threads is None else int(num_threads)


def scale(scale: Optional[float]) -> Optional[float]:
    return None if scale is None else float(scale)
