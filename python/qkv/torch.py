"""PyTorch drop-in: ``qkv.torch.scaled_dot_product_attention``.

    >>> import torch, qkv.torch
    >>> with torch.no_grad():
    ...     out = qkv.torch.scaled_dot_product_attention(q, k, v, is_causal=True)

Same arguments, layout and results as ``torch.nn.functional.
scaled_dot_product_attention`` for CPU tensors, computed by qkv without
copying q, k or v, gradients included (training). To route existing code
through qkv::

    torch.nn.functional.scaled_dot_product_attention = qkv.torch.scaled_dot_product_attention
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from . import _qkv

__all__ = ["scaled_dot_product_attention"]

# The inputs qkv computes gradients for (qkv::attention_backward).
DIFFERENTIABLE = ("q", "k", "v", "sinks", "query", "key", "value")


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

    Autograd works: with grad mode on and query, key or value requiring
    grad, the backward pass is qkv's (``qkv::attention_backward``: the scores
    recomputed from the saved log-sum-exp, no seq_q x seq_kv matrix kept).
    A float ``attn_mask`` gets no gradient (it may not require grad).

    One difference: a row in which no key takes part (all masked) is 0 here,
    where PyTorch returns NaN (and its gradients are 0 here).

    Raises:
        NotImplementedError: ``dropout_p > 0``, ``attn_mask`` requires grad
            while grad mode is on, or inputs of another rank than 3 or 4.
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
    grad = requires_grad(query, key, value)
    prepared = _prepare(op, DIFFERENTIABLE, query=query, key=key, value=value, attn_mask=attn_mask)
    attn_mask = prepared[3]
    if not grad:  # (with grad, autograd keeps the inputs' graph: _Attention detaches them)
        query, key, value = prepared[:3]

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

    options = dict(
        causal=bool(is_causal),
        causal_align="top-left",
        window=(-1, -1),
        scale=None if scale is None else float(scale),
        softcap=0.0,
        num_threads=torch.get_num_threads(),  # torch.set_num_threads governs it, as torch's ops
        exact_bf16_probs=False,
    )
    # qkv's layout is [batch, seq, heads, dim]: transposed views.
    if grad:
        out, _ = _Attention.apply(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), None, attn_mask, None, options
        )
        out = out.transpose(1, 2)
    else:
        batch, heads, seq_q, _ = query.shape
        out = torch.empty((batch, heads, seq_q, value.shape[3]), dtype=query.dtype)
        _qkv.attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), out.transpose(1, 2),
            mask=attn_mask, **options
        )
    return out[0] if rank == 3 else out


def requires_grad(*tensors: Any) -> bool:
    """Whether autograd must record a call on ``tensors``: grad mode is on and
    one of them requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


class _Attention(torch.autograd.Function):
    """qkv::attention with qkv::attention_backward as its gradient, on
    tensors in qkv's layout ([batch, seq, heads, dim]); returns ``(out,
    lse)``, lse not differentiable. Gradients flow to q, k, v and sinks;
    mask and alibi_slopes are constants (``_prepare`` refuses them with
    requires_grad). The backward recomputes the scores from the saved lse: it
    keeps q, k, v, out and lse, no seq_q x seq_kv matrix."""

    @staticmethod
    def forward(ctx: Any, q, k, v, sinks, mask, alibi_slopes, options):  # type: ignore[override]
        q, k, v = q.detach(), k.detach(), v.detach()
        sinks = None if sinks is None else sinks.detach()
        batch, seq_q, heads, _ = q.shape
        out = torch.empty((batch, seq_q, heads, v.shape[3]), dtype=q.dtype)
        lse = torch.empty((batch, heads, seq_q), dtype=torch.float32)
        _qkv.attention(q, k, v, out, lse=lse, sinks=sinks, mask=mask, alibi_slopes=alibi_slopes, **options)
        ctx.save_for_backward(q, k, v, out, lse, sinks, mask, alibi_slopes)
        ctx.options = {n: x for n, x in options.items() if n != "exact_bf16_probs"}
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout, _dlse):  # type: ignore[override]
        q, k, v, out, lse, sinks, mask, alibi_slopes = ctx.saved_tensors
        if dout.stride(-1) != 1:  # e.g. the expanded ones of out.sum().backward()
            dout = dout.contiguous()
        dout = dout.to(q.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dsinks = torch.empty_like(sinks) if sinks is not None and ctx.needs_input_grad[3] else None
        _qkv.attention_backward(
            q, k, v, out, lse, dout, dq, dk, dv,
            dsinks=dsinks, sinks=sinks, mask=mask, alibi_slopes=alibi_slopes, **ctx.options
        )
        return dq, dk, dv, dsinks, None, None, None


def _prepare(op: str, differentiable: Tuple[str, ...] = (), **tensors: Any) -> Tuple[Any, ...]:
    """Checks the torch tensors among ``tensors`` and returns them (in order)
    detached, zero-copy; ``alibi_slopes`` and ``sinks`` as float32. Only the
    ``differentiable`` ones may require grad while grad mode is on (the
    caller then goes through ``_Attention``)."""
    needs_grad = [
        n
        for n, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.requires_grad and n not in differentiable
    ]
    if needs_grad and torch.is_grad_enabled():
        what = (
            f"qkv computes gradients for {', '.join(differentiable)} only"
            if differentiable
            else "this qkv function has no backward"
        )
        raise NotImplementedError(
            f"{op}: {', '.join(needs_grad)} require grad, but {what}; "
            "call it under torch.no_grad() or torch.inference_mode(), or detach them"
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
