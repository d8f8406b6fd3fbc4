"""qkv: exact, fast, memory-efficient attention for CPUs.

    >>> import numpy as np, qkv
    >>> q = np.random.randn(1, 128, 8, 64).astype(np.float32)  # [batch, seq_q, heads, head_dim]
    >>> k = np.random.randn(1, 128, 2, 64).astype(np.float32)  # [batch, seq_kv, kv_heads, head_dim]
    >>> o = qkv.attention(q, k, k, causal=True)                # [batch, seq_q, heads, head_dim]

``qkv.attention`` takes NumPy arrays, PyTorch tensors or anything with DLPack
without copying them, and returns the caller's kind of array; so do
``qkv.attention_varlen`` (sequences of different lengths packed end to end) and
``qkv.attention_with_kvcache`` (decode steps over a ``qkv.KVCache``, contiguous
or paged, with ``qkv.Rope`` rotary embeddings); ``qkv.merge_attention`` merges
the results of disjoint key sets (ring attention); ``qkv.attention_backward``
gives the gradients (and with PyTorch tensors ``qkv.attention`` is
differentiable through autograd).
``qkv.torch.scaled_dot_product_attention`` is a drop-in for
``torch.nn.functional.scaled_dot_product_attention`` (``import qkv.torch``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _arrays, _qkv
from .kv_cache import KVCache, Rope, apply_rope, attention_with_kvcache
from .merge import merge_attention
from .varlen import attention_varlen

__version__: str = _qkv.__version__
__all__ = [
    "attention",
    "attention_backward",
    "attention_varlen",
    "merge_attention",
    "attention_with_kvcache",
    "KVCache",
    "Rope",
    "apply_rope",
    "__version__",
]


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    sinks: Any = None,
    mask: Any = None,
    return_lse: bool = False,
    num_threads: Optional[int] = None,
    exact_bf16_probs: bool = False,
) -> Any:
    """Scaled dot-product attention, ``softmax(scale * q k^T + masks) v``, exactly.

    Shapes (K and V may have fewer heads: GQA/MQA, ``kv_heads`` must divide ``heads``)::

        q    [batch, seq_q,  heads,    head_dim]
        k    [batch, seq_kv, kv_heads, head_dim]
        v    [batch, seq_kv, kv_heads, head_dim_v]
        out  [batch, seq_q,  heads,    head_dim_v]   same dtype as q
        lse  [batch, heads,  seq_q]                  float32, natural log

    q, k and v are NumPy arrays, PyTorch tensors (CPU) or any CPU array with
    DLPack, of one dtype: float32 or float16 (and bfloat16 for PyTorch).
    They are read in place, never copied: any strides work as long as the
    innermost dimension is contiguous, so a ``[batch, heads, seq, head_dim]``
    buffer is passed as ``x.transpose(0, 2, 1, 3)`` (NumPy) or
    ``x.transpose(1, 2)`` (PyTorch). The result is a new array of the same kind
    as q (PyTorch in, PyTorch out; NumPy otherwise).

    For query row i of head h and key j, with ``diag = seq_kv - seq_q``:

    ==========================  ===============================================
    option                      effect
    ==========================  ===============================================
    scale                       ``s = scale * q_i . k_j``, default 1/sqrt(head_dim)
    softcap c > 0               ``s = c * tanh(s / c)``
    causal, "bottom-right"      key j visible iff ``j <= i + diag`` (FlashAttention)
    causal, "top-left"          key j visible iff ``j <= i`` (PyTorch is_causal)
    window (left, right)        visible iff ``i + diag - left <= j <= i + diag + right``;
                                -1 = unbounded on that side
    alibi_slopes [H] or [B, H]  ``s -= slope * |i + diag - j|``
    mask, bool                  visible iff ``mask[b, h, i, j]`` (True = attend)
    mask, float32               ``s += mask[b, h, i, j]``
    sinks [H]                   ``exp(sink_h)`` is added to the softmax denominator
    ==========================  ===============================================

    A row with no visible key gives 0 and lse -inf. Finite inputs never give
    NaN or Inf, whatever the magnitude of the logits.

    Args:
        q, k, v: the inputs, shapes above.
        causal: apply a causal mask aligned by ``causal_align``.
        causal_align: "bottom-right" (the last query sees the last key) or
            "top-left" (query i sees keys 0..i).
        window: sliding window ``(left, right)``; None or (-1, -1) = none.
        scale: the logit scale; None = 1/sqrt(head_dim).
        softcap: logit soft-capping; 0 = off.
        alibi_slopes: ALiBi slopes, [heads] or [batch, heads]; converted to
            float32 (a small copy).
        sinks: attention-sink logits, [heads]; converted to float32.
        mask: bool or float32, broadcastable (NumPy rules, aligned right) to
            [batch, heads, seq_q, seq_kv]; size-1 or stride-0 dimensions are
            never expanded in memory.
        return_lse: also return the log-sum-exp of each row.
        num_threads: OpenMP threads; None = all the process may use.
        exact_bf16_probs: bfloat16 on a CPU with AMX or AVX512-BF16: the
            probabilities enter ``P v`` rounded to bfloat16 by default, as in
            PyTorch and FlashAttention (each weight off by up to 2^-8 of
            itself); True carries them to 2^-16 with a second tile product on
            AMX (about 1.3x the time), or in float32 on the float32 kernel
            elsewhere, so out is as close to the exact result as bfloat16
            allows. Every other path keeps them in float32.

    Returns:
        ``out``, or ``(out, lse)`` when ``return_lse`` is true.

    Raises:
        TypeError: an argument has an unsupported dtype, or q/k/v dtypes differ.
        ValueError: inconsistent shapes, a non-contiguous innermost dimension,
            an array not on the CPU, bad options; the message names the argument.
        NotImplementedError: mask or alibi_slopes require grad while grad mode
            is on (they get no gradient).

    With PyTorch tensors the call is differentiable: with grad mode on and q,
    k, v or sinks requiring grad, autograd records it and its backward is
    ``qkv.attention_backward`` (the saved out and lse, no seq_q x seq_kv
    matrix).
    """
    options = dict(
        causal=bool(causal),
        causal_align=causal_align,
        window=_arrays.window(window),
        scale=_arrays.scale(scale),
        softcap=float(softcap),
        num_threads=_arrays.threads(num_threads),
        exact_bf16_probs=bool(exact_bf16_probs),
    )
    if _arrays.is_torch_tensor(q):
        from . import torch as qkv_torch  # torch is already imported: q is a tensor

        grad = qkv_torch.requires_grad(q, k, v, sinks)
        sinks_in = sinks
        q_in, k_in, v_in, mask, alibi_slopes, sinks = qkv_torch._prepare(
            "qkv.attention", qkv_torch.DIFFERENTIABLE,
            q=q, k=k, v=v, mask=mask, alibi_slopes=alibi_slopes, sinks=sinks
        )
        if grad:
            for x, name in ((q, "q"), (k, "k"), (v, "v")):
                if x.ndim != 4:
                    raise ValueError(f"{name} must have rank 4 but has shape {list(x.shape)}")
            if sinks_in is not None:  # float32, differentiably (a copy only if it is not)
                sinks_in = qkv_torch.torch.as_tensor(sinks_in).to(qkv_torch.torch.float32)
            out, lse = qkv_torch._Attention.apply(
                q, k, v, sinks_in, _arrays.as_array(mask), alibi_slopes, options
            )
            return (out, lse) if return_lse else out
        q, k, v = q_in, k_in, v_in
        empty, float32 = qkv_torch.torch.empty, qkv_torch.torch.float32
    else:
        q, k, v = (_arrays.as_numpy(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
        alibi_slopes = _arrays.float32_vector(alibi_slopes)
        sinks = _arrays.float32_vector(sinks)
        empty, float32 = np.empty, np.float32
    mask = _arrays.as_array(mask)
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 but has shape {list(x.shape)}")

    batch, seq_q, heads, _ = q.shape
    out = empty((batch, seq_q, heads, v.shape[3]), dtype=q.dtype)
    lse = empty((batch, heads, seq_q), dtype=float32) if return_lse else None
    _qkv.attention(q, k, v, out, lse=lse, alibi_slopes=alibi_slopes, sinks=sinks, mask=mask, **options)
    return (out, lse) if return_lse else out


def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    dout: Any,
    *,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    sinks: Any = None,
    mask: Any = None,
    num_threads: Optional[int] = None,
) -> Tuple[Any, ...]:
    """The gradients of ``qkv.attention``: FlashAttention's backward pass.

    ``q, k, v`` and every option as given to ``qkv.attention``; ``out, lse``
    what it returned (``return_lse=True``); ``dout`` the gradient of the loss
    with respect to ``out`` (its shape and dtype). The scores are recomputed
    from ``lse`` block by block: no ``seq_q x seq_kv`` matrix is formed.

    With PyTorch tensors ``qkv.attention`` is differentiable by itself
    (autograd calls this); this function is for NumPy users and for those who
    keep ``out`` and ``lse`` themselves.

    For query row i, visible key j: ``P = exp(s - lse)``, ``D_i = dout_i .
    out_i``, ``dv_j = sum_i P_ij dout_i``, ``ds_ij = P_ij (dout_i . v_j -
    D_i)`` (times ``1 - tanh^2(u / softcap)`` with a softcap, u the score
    before it), ``dq_i = scale sum_j ds_ij k_j``, ``dk_j = scale sum_i ds_ij
    q_i`` (dk, dv summed over the query heads sharing a kv head), ``dsink_h =
    -sum exp(sink_h - lse_i) D_i``. ALiBi slopes and masks get no gradient.
    A row that saw no key contributes nothing.

    Returns:
        ``(dq, dk, dv)`` of q's, k's and v's shapes and q's dtype, and
        ``dsinks`` ([heads], float32) fourth when ``sinks`` is given.

    Raises:
        TypeError, ValueError: as ``qkv.attention``, naming the argument.
    """
    empty, float32, arrays = _arrays.prepare(
        "qkv.attention_backward", q=q, k=k, v=v, out=out, lse=lse, dout=dout,
        alibi_slopes=alibi_slopes, sinks=sinks,
    )
    q, k, v, out, lse, dout, alibi_slopes, sinks = arrays
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 but has shape {list(x.shape)}")
    dq = empty(tuple(q.shape), dtype=q.dtype)
    dk = empty(tuple(k.shape), dtype=q.dtype)
    dv = empty(tuple(v.shape), dtype=q.dtype)
    dsinks = None if sinks is None else empty((q.shape[2],), dtype=float32)
    _qkv.attention_backward(
        q, k, v, out, lse, dout, dq, dk, dv,
        dsinks=dsinks,
        causal=bool(causal),
        causal_align=causal_align,
        window=_arrays.window(window),
        scale=_arrays.scale(scale),
        softcap=float(softcap),
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        mask=_arrays.as_array(mask),
        num_threads=_arrays.threads(num_threads),
    )
    return (dq, dk, dv) if dsinks is None else (dq, dk, dv, dsinks)
