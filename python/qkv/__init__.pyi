"""qkv: exact, fast, memory-efficient attention for CPUs (type stubs)."""

from typing import Literal, Optional, Tuple, TypeVar, overload

from .kv_cache import KVCache as KVCache, Rope as Rope, apply_rope as apply_rope

__version__: str
__all__ = [
    "attention",
    "attention_backward",
    "attention_varlen",
    "attention_with_kvcache",
    "KVCache",
    "Rope",
    "apply_rope",
    "__version__",
]

# The caller's array type: a NumPy array or a torch.Tensor comes back as such
# (other DLPack arrays come back as NumPy arrays).
Array = TypeVar("Array")

@overload
def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = False,
    causal_align: Literal["bottom-right", "top-left"] = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    mask: Optional[object] = None,
    return_lse: Literal[False] = False,
    num_threads: Optional[int] = None,
    exact_bf16_probs: bool = False,
) -> Array:
    """Scaled dot-product attention; returns out [batch, seq_q, heads, head_dim_v]."""

@overload
def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = False,
    causal_align: Literal["bottom-right", "top-left"] = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    mask: Optional[object] = None,
    return_lse: Literal[True],
    num_threads: Optional[int] = None,
    exact_bf16_probs: bool = False,
) -> Tuple[Array, Array]:
    """Scaled dot-product attention; returns (out, lse [batch, heads, seq_q] float32)."""

def attention_backward(
    q: Array,
    k: Array,
    v: Array,
    out: Array,
    lse: Array,
    dout: Array,
    *,
    causal: bool = False,
    causal_align: Literal["bottom-right", "top-left"] = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    mask: Optional[object] = None,
    num_threads: Optional[int] = None,
) -> Tuple[Array, ...]:
    """Gradients of qkv.attention: (dq, dk, dv), and dsinks [heads] when sinks is given."""


@overload
def attention_varlen(
    q: Array,
    k: Array,
    v: Array,
    cu_seqlens_q: object,
    cu_seqlens_k: object,
    *,
    causal: bool = False,
    causal_align: Literal["bottom-right", "top-left"] = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    return_lse: Literal[False] = False,
    num_threads: Optional[int] = None,
) -> Array:
    """Packed variable-length attention; returns out [total_q, heads, head_dim_v]."""

@overload
def attention_varlen(
    q: Array,
    k: Array,
    v: Array,
    cu_seqlens_q: object,
    cu_seqlens_k: object,
    *,
    causal: bool = False,
    causal_align: Literal["bottom-right", "top-left"] = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    return_lse: Literal[True],
    num_threads: Optional[int] = None,
) -> Tuple[Array, Array]:
    """Packed variable-length attention; returns (out, lse [heads, total_q] float32)."""

@overload
def attention_with_kvcache(
    q: Array,
    cache: KVCache,
    k_new: Optional[object] = None,
    v_new: Optional[object] = None,
    *,
    rope: Optional[Rope] = None,
    causal: bool = False,
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    return_lse: Literal[False] = False,
    num_threads: Optional[int] = None,
    num_splits: int = 0,
    exact_bf16_probs: bool = False,
) -> Array:
    """Appends k_new/v_new to the cache, then attends q over it; returns out
    [batch, seq_q, heads, head_dim_v]."""

@overload
def attention_with_kvcache(
    q: Array,
    cache: KVCache,
    k_new: Optional[object] = None,
    v_new: Optional[object] = None,
    *,
    rope: Optional[Rope] = None,
    causal: bool = False,
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Optional[object] = None,
    sinks: Optional[object] = None,
    return_lse: Literal[True],
    num_threads: Optional[int] = None,
    num_splits: int = 0,
    exact_bf16_probs: bool = False,
) -> Tuple[Array, Array]:
    """Appends k_new/v_new to the cache, then attends q over it; returns (out,
    lse [batch, heads, seq_q] float32)."""
