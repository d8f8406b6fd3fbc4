"""``qkv.merge_attention``: the attention over disjoint key sets, merged from
each set's output and log-sum-exp (the C++ ``qkv/merge.h``)."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

from . import _arrays, _qkv

__all__ = ["merge_attention"]


def merge_attention(parts: Iterable[Tuple[Any, Any]], *, num_threads: Optional[int] = None) -> Tuple[Any, Any]:
    """Merges ``(out, lse)`` pairs of the same queries over disjoint key sets.

    Each part is what ``qkv.attention(q, k_p, v_p, return_lse=True)`` returns
    for the keys ``k_p``, ``v_p`` (split across calls, processes or machines,
    as in ring attention)::

        out_p  [batch, seq_q, heads, head_dim_v]   float32, float16 or bfloat16
        lse_p  [batch, heads, seq_q]               float32, natural log

    The result is the attention over all the parts' keys::

        lse = log(sum_p exp(lse_p)),   out = sum_p exp(lse_p - lse) out_p

    ``out`` has the first part's dtype and kind (PyTorch in, PyTorch out). A
    row no part saw a key of (every lse_p -inf) gives 0 and lse -inf. A sink
    belongs to the softmax once: pass ``sinks`` to one part's call only.

    Returns:
        ``(out, lse)``.

    Raises:
        ValueError: no parts, or shapes that do not match (the message names
            the part); TypeError: an unsupported dtype.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("qkv.merge_attention: parts is empty")
    arrays = {}
    for i, part in enumerate(parts):
        if len(part) != 2:
            raise ValueError(f"qkv.merge_attention: parts[{i}] must be a pair (out, lse)")
        arrays[f"parts[{i}].o"], arrays[f"parts[{i}].lse"] = part
    empty, float32, converted = _arrays.prepare("qkv.merge_attention", **arrays)
    os, lses = list(converted[0::2]), list(converted[1::2])
    out = empty(tuple(os[0].shape), dtype=os[0].dtype)
    lse = empty(tuple(lses[0].shape), dtype=float32)
    _qkv.merge_attention(os, lses, out, lse=lse, num_threads=_arrays.threads(num_threads))
    return out, lse
