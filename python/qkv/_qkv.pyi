"""Low-level binding of the qkv C++ library; use the functions of the qkv package instead.

Arrays are anything with DLPack or the buffer protocol (NumPy, PyTorch, ...),
on the CPU; they are read (and o, lse written) in place, never copied. A rope
crosses as (style, theta, rotary_dim).
"""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

_RopeArgs = Tuple[str, float, int]

__version__: str

def attention(
    q: Any,
    k: Any,
    v: Any,
    o: Any,
    *,
    lse: Optional[Any] = None,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Tuple[int, int] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[Any] = None,
    sinks: Optional[Any] = None,
    mask: Optional[Any] = None,
    num_threads: int = 0,
    exact_bf16_probs: bool = False,
) -> None:
    """Computes attention into o (and lse) in place.

    q [batch, seq_q, heads, head_dim], k [batch, seq_kv, kv_heads, head_dim],
    v [batch, seq_kv, kv_heads, head_dim_v]; o [batch, seq_q, heads,
    head_dim_v] of q's dtype and lse [batch, heads, seq_q] float32 are
    allocated by the caller. Raises TypeError for a wrong dtype, ValueError
    for anything else qkv rejects.
    """

def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    o: Any,
    lse: Any,
    dout: Any,
    dq: Any,
    dk: Any,
    dv: Any,
    *,
    dsinks: Optional[Any] = None,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Tuple[int, int] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[Any] = None,
    sinks: Optional[Any] = None,
    mask: Optional[Any] = None,
    num_threads: int = 0,
) -> None:
    """Computes the gradients dq, dk, dv (and dsinks) in place.

    The forward's q, k, v, its o and lse, and dout (o's shape and dtype) are
    read; dq, dk, dv (q's, k's and v's shapes, q's dtype) and dsinks [heads]
    float32 are allocated by the caller. Raises TypeError for a wrong dtype,
    ValueError for anything else qkv rejects.
    """

def attention_varlen(
    q: Any,
    k: Any,
    v: Any,
    o: Any,
    cu_seqlens_q: np.ndarray,
    cu_seqlens_k: np.ndarray,
    *,
    lse: Optional[Any] = None,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Tuple[int, int] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[Any] = None,
    sinks: Optional[Any] = None,
    num_threads: int = 0,
) -> None:
    """Computes packed variable-length attention into o (and lse) in place.

    q [total_q, heads, head_dim], k/v [total_kv, kv_heads, head_dim(_v)], o
    [total_q, heads, head_dim_v] of q's dtype, lse [heads, total_q] float32,
    cu_seqlens_q/k contiguous int32 [batch + 1]. Raises TypeError for a wrong
    dtype, ValueError for anything else qkv rejects.
    """

class KVCache:
    """qkv::KVCache: the keys and values of one attention layer, kept across
    decode steps; use qkv.KVCache instead."""

    def __init__(
        self,
        batch: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        head_dim_v: int = 0,
        dtype: str = "float16",
        page_size: int = 0,
        num_pages: int = 0,
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def page_size(self) -> int: ...
    @property
    def num_pages(self) -> int: ...
    @property
    def pages_per_sequence(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def lengths(self) -> List[int]: ...
    def set_lengths(self, lengths: List[int]) -> None: ...
    @property
    def block_table(self) -> List[int]:
        """Flattened [batch * pages_per_sequence]."""
    def set_block_table(self, table: List[int]) -> None: ...
    def append(self, k_new: Any, v_new: Any, rope: Optional[_RopeArgs] = None) -> None: ...
    def read_key(self, b: int, j: int, kv_head: int) -> np.ndarray: ...
    def read_value(self, b: int, j: int, kv_head: int) -> np.ndarray: ...

def attention_with_kvcache(
    q: Any,
    cache: KVCache,
    o: Any,
    *,
    k_new: Optional[Any] = None,
    v_new: Optional[Any] = None,
    lse: Optional[Any] = None,
    rope: Optional[_RopeArgs] = None,
    causal: bool = False,
    window: Tuple[int, int] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[Any] = None,
    sinks: Optional[Any] = None,
    num_threads: int = 0,
    num_splits: int = 0,
    exact_bf16_probs: bool = False,
) -> None:
    """Appends k_new/v_new (if given) to the cache, then attends q [batch,
    seq_q, heads, head_dim] over it into o [batch, seq_q, heads, head_dim_v] of
    q's dtype (and lse [batch, heads, seq_q] float32), allocated by the caller.
    On error nothing is written and the cache is unchanged."""

def apply_rope(x: Any, positions: np.ndarray, rope: _RopeArgs) -> None:
    """Rotates x [batch, seq, heads, head_dim] in place; token t of batch b is
    at position positions[b] + t (positions: contiguous int64 [batch])."""

def view_info(a: Any) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
    """(address, shape, strides in elements) of the view the binding hands qkv
    for `a`; for tests that check arrays cross without a copy."""
