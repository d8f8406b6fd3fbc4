"""``qkv.attention_varlen``: sequences of different lengths packed end to end,
as FlashAttention's ``flash_attn_varlen_func`` (the C++ ``qkv/varlen.h``)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _arrays, _qkv

__all__ = ["attention_varlen"]


def attention_varlen(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    *,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    sinks: Any = None,
    return_lse: bool = False,
    num_threads: Optional[int] = None,
) -> Any:
    """Attention over a batch of packed sequences, each attended on its own.

    Shapes::

        q             [total_q,  heads,    head_dim]
        k             [total_kv, kv_heads, head_dim]
        v             [total_kv, kv_heads, head_dim_v]
        cu_seqlens_q  [batch + 1]  int: 0, then non-decreasing, total_q last
        cu_seqlens_k  [batch + 1]  int: 0, then non-decreasing, total_kv last
        out           [total_q,  heads,    head_dim_v]   same dtype and kind as q
        lse           [heads,    total_q]                float32, natural log

    Sequence s is query rows ``[cu_seqlens_q[s], cu_seqlens_q[s + 1])``
    against key rows ``[cu_seqlens_k[s], cu_seqlens_k[s + 1])``, with the
    semantics of ``qkv.attention`` for that sequence alone (``causal`` and
    ``window`` are aligned per sequence; ``alibi_slopes`` may be [heads] or
    [batch, heads]). Masks are not supported. The result equals
    ``qkv.attention`` on each sequence as a batch of one.

    q, k and v are NumPy arrays, PyTorch (CPU) tensors or DLPack arrays of
    one dtype (float32, float16, bfloat16), read in place with any strides
    that keep the last dimension contiguous. cu_seqlens are int32 arrays
    (NumPy or PyTorch, read in place) or any integers (converted to int32).

    Args:
        q, k, v, cu_seqlens_q, cu_seqlens_k: shapes above.
        causal, causal_align, window, scale, softcap, alibi_slopes, sinks,
            return_lse, num_threads: as in ``qkv.attention``.

    Returns:
        ``out``, or ``(out, lse)`` when ``return_lse`` is true.

    Raises:
        ValueError: bad cu_seqlens or shapes (the message names the argument,
            and the sequence for a per-sequence problem); nothing is written.
        TypeError: an unsupported dtype, or q/k/v dtypes differ.
    """
    empty, float32, (q, k, v, alibi_slopes, sinks) = _arrays.prepare(
        "qkv.attention_varlen", q=q, k=k, v=v, alibi_slopes=alibi_slopes, sinks=sinks
    )
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 3:
            raise ValueError(f"{name} must be [total, heads, dim] (rank 3) but has shape {list(x.shape)}")
    offsets = []
    for cu, name in ((cu_seqlens_q, "cu_seqlens_q"), (cu_seqlens_k, "cu_seqlens_k")):
        cu = _arrays.int_array(cu, name, np.int32)
        if cu.ndim != 1:
            raise ValueError(f"{name} must be [batch + 1] but has shape {list(cu.shape)}")
        offsets.append(cu)

    total_q, heads, _ = q.shape
    out = empty((total_q, heads, v.shape[2]), dtype=q.dtype)
    lse = empty((heads, total_q), dtype=float32) if return_lse else None
    _qkv.attention_varlen(
        q, k, v, out, offsets[0], offsets[1],
        lse=lse,
        causal=bool(causal),
        causal_align=causal_align,
        window=_arrays.window(window),
        scale=_arrays.scale(scale),
        softcap=float(softcap),
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        num_threads=_arrays.threads(num_threads),
    )
    return (out, lse) if return_lse else out
