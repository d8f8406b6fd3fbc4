"""PyTorch drop-in: ``qkv.torch.scaled_dot_product_attention``.

    >>> import torch, qkv.torch
    >>> with torch.no_grad():
    ...     out = qkv.torch.scaled_dot_product_attention(q, k, v, is_causal=True)

Same arguments, layout and results as ``torch.nn.functional.
scaled_dot_product_attention`` for CPU tensors, computed by qkv without
copying q, k or v. To route existing code through qkv::

    torch.nn.functional.scaled_dot_product_attention = qkv.torch.scaled_dot_product_attention
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from . import _qkv

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention``, computed by qkv on the CPU.

    Shapes, as PyTorch (``heads_kv`` may differ only with ``enable_gqa``)::

        query     [batch, heads,    seq_q,  head_dim]    or [heads, seq_q, head_dim]
        key       [batch, heads_kv, seq_kv, head_dim]
        value     [batch, heads_kv, seq_kv, head_dim_v]
        attn_mask broadcastable to [batch, heads, seq_q, seq_kv]
        returns   [batch, heads,    seq_q,  head_dim_v]  same dtype as query

    The tensors are read in place (any strides with a contiguous last
    dimension); dtypes float32, float16 or bfloat16, on the CPU. It runs on
    ``torch.get_num_threads()`` threads, like PyTorch's own CPU ops.

    Semantics are PyTorch's: ``scale`` defaults to 1/sqrt(head_dim);
    ``is_causal`` is the top-left causal mask (query i sees keys 0..i); a bool
    ``attn_mask`` marks with True the keys that take part, a float one is added
    to the scores (a float mask that is not float32 is converted to float32, a
    copy of the mask only); with ``enable_gqa`` query head h reads key/value
    head ``h // (heads // heads_kv)``.

    One difference: a row in which no key takes part (all masked) is 0 here,
    where PyTorch returns NaN.

    Raises:
        NotImplementedError: ``dropout_p > 0``, or an input requires grad while
            grad mode is on (qkv has no backward yet: use ``torch.no_grad()``
            or ``torch.inference_mode()``), or inputs of another rank than 3 or 4.
        ValueError: ``is_causal`` together with ``attn_mask`` (PyTorch raises
            too), different head counts without ``enable_gqa``, a tensor not on
            the CPU, or shapes qkv rejects.
        TypeError: an unsupported dtype, or query/key/value dtypes differ.
    """
    op = "qkv.torch.scaled_dot_product_attention"
    if dropout_p != 0.0:
        raise NotImplementedError(f"{op}: qkv has no dropout; dropout_p must be 0, not {dropout_p}")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{op}: attn_mask must be None when is_causal is set (as in PyTorch)")
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, not {type(t).__name__}")
    query, key, value, attn_mask = _prepare(
        op, query=query, key=key, value=value, attn_mask=attn_mask
    )

    rank = query.dim()
    if rank not in (3, 4) or key.dim() != rank or value.dim() != rank:
        raise NotImplementedError(
            f"{op}: query, key and value must all have rank 3 or 4, but have shapes "
            f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}"
        )
    if rank == 3:  # [heads, seq, dim]: a batch of one (views, no copies)
        query, key, value = query[None], key[None], value[None]
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(
            f"{op}: query has {query.shape[1]} heads but key has {key.shape[1]}; "
            "pass enable_gqa=True for grouped-query attention"
        )
    if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.dtype != torch.float32:
        attn_mask = attn_mask.to(torch.float32)

    batch, heads, seq_q, _ = query.shape
    out = torch.empty((batch, heads, seq_q, value.shape[3]), dtype=query.dtype)
    # qkv's layout is [batch, seq, heads, dim]: pass transposed views.
    _qkv.attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), out.transpose(1, 2),
        causal=bool(is_causal),
        causal_align="top-left",
        scale=None if scale is None else float(scale),
        mask=attn_mask,
        num_threads=torch.get_num_threads(),  # torch.set_num_threads governs it, as torch's ops
    )
    return out[0] if rank == 3 else out


def _prepare(op: str, **tensors: Any) -> Tuple[Any, ...]:
    """Checks the torch tensors among ``tensors`` and returns them (in order)
    detached, zero-copy; ``alibi_slopes`` and ``sinks`` as float32."""
    needs_grad = [n for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    if needs_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            f"{op}: {', '.join(needs_grad)} require grad, but qkv has no backward yet; "
            "call it under torch.no_grad() or torch.inference_mode(), or detach the inputs"
        )
    result = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                raise ValueError(f"{op}: {name} must be on the CPU, but is on {t.device}")
            t = t.detach()  # a view: DLPack refuses tensors that require grad
            if name in ("alibi_slopes", "sinks"):
                t = t.to(torch.float32)
        elif t is not None and name in ("alibi_slopes", "sinks"):
            t = torch.as_tensor(t, dtype=torch.float32)
        result.append(t)
    return tuple(result)
