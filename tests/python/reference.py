"""The Python tests' helpers: the oracles (attention in NumPy float64, written
straight from the semantics table in include/qkv/attention.h; it materializes
the scores, so small shapes only; and RoPE from include/qkv/rope.h), the
suite's one tolerance rule, and seeded inputs in qkv's layout."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np


def attention_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    causal: bool = False,
    causal_align: str = "bottom-right",
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    sinks: Any = None,
    mask: Any = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(o [batch, seq_q, heads, head_dim_v], lse [batch, heads, seq_q]) in float64.

    q [batch, seq_q, heads, head_dim], k [batch, seq_kv, kv_heads, head_dim],
    v [batch, seq_kv, kv_heads, head_dim_v], any float dtype (read as float64).
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, seq_q, heads, head_dim = q.shape
    seq_kv, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    k = np.repeat(k, group, axis=2)  # query head h reads KV head h // group
    v = np.repeat(v, group, axis=2)
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim)

    # s [batch, heads, seq_q, seq_kv]
    s = np.einsum("bihd,bjhd->bhij", q, k) * np.float64(np.float32(scale))
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)

    i = np.arange(seq_q)[:, None]
    j = np.arange(seq_kv)[None, :]
    diag = seq_kv - seq_q
    visible = np.ones((seq_q, seq_kv), dtype=bool)
    if causal:
        visible &= j <= (i + diag if causal_align == "bottom-right" else i)
    left, right = (-1, -1) if window is None else window
    if left >= 0:
        visible &= j >= i + diag - left
    if right >= 0:
        visible &= j <= i + diag + right
    visible = np.broadcast_to(visible, s.shape)

    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, dtype=np.float64)
        slopes = np.broadcast_to(slopes if slopes.ndim == 2 else slopes[None, :], (batch, heads))
        s = s - slopes[:, :, None, None] * np.abs(i + diag - j)
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask), s.shape)
        if m.dtype == bool:
            visible = visible & m
        else:
            s = s + m.astype(np.float64)

    s = np.where(visible, s, -np.inf)
    row_max = s.max(axis=-1, keepdims=True) if seq_kv > 0 else np.full(s.shape[:-1] + (1,), -np.inf)
    empty = ~np.isfinite(row_max) & (row_max < 0)  # no visible key (or only -inf scores)
    row_max = np.where(empty, 0.0, row_max)
    # Shift by the largest of the scores and the sink, so neither exp overflows
    # (a sink far above the scores: lse ~ sink, o ~ 0).
    sink = None if sinks is None else np.asarray(sinks, dtype=np.float64)[None, :, None, None]
    shift = row_max if sink is None else np.maximum(row_max, sink)
    w = np.exp(s - shift)  # exp(-inf) = 0 for hidden keys
    total = w.sum(axis=-1, keepdims=True)
    if sink is not None:
        total = total + np.exp(sink - shift)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(empty, 0.0, w / total)
        lse = np.where(empty, -np.inf, shift + np.log(total))[..., 0]
    o = np.einsum("bhij,bjhd->bihd", p, v)
    return o, lse


# Storage dtype -> (relative, absolute as a factor of max|v|) tolerance of o.
# The binding does no arithmetic: these only need to separate "computed the
# right thing" from "passed a wrong option, stride or dtype", which moves
# outputs by O(max|v|). float32: float32 accumulation over short rows;
# float16/bfloat16: the output rounding (2^-11, 2^-8) dominates.
_O_TOLERANCE = {"float32": (1e-4, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}


def assert_close(actual: Any, expected: np.ndarray, dtype: str, v_max: float = 1.0,
                 score_bound: float = 0.0, slack: float = 0.0) -> None:
    """THE tolerance rule for o (see _O_TOLERANCE). score_bound: the largest
    |scale| * sum_d |q_d k_d| of the call; float32 scores err by a few 2^-24 of
    it, and each weight by as much relative to itself, so o by about twice that
    times max|v|: with logits in the hundreds that outgrows the fixed terms.
    slack: an absolute error the computation is allowed on top (a stated bound,
    such as an int8 cache's fixed point)."""
    rtol, atol = _O_TOLERANCE[dtype]
    atol = atol * max(v_max, 1e-30) + 4 * 2.0**-24 * score_bound * v_max + slack
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               rtol=rtol, atol=atol)


def score_bound(q: np.ndarray, k: np.ndarray, scale: Optional[float] = None) -> float:
    """max over (b, i, h, j) of |scale| * sum_d |q_d k_d| (GQA: head h reads kv head
    h // group), for assert_close."""
    if q.size == 0 or k.size == 0:
        return 0.0
    qa = np.abs(np.asarray(q, dtype=np.float64))
    ka = np.abs(np.asarray(k, dtype=np.float64))
    ka = np.repeat(ka, q.shape[2] // k.shape[2], axis=2)
    s = 1.0 / np.sqrt(q.shape[3]) if scale is None else abs(scale)
    return float(s * np.einsum("bihd,bjhd->bhij", qa, ka).max())


def assert_lse_close(actual: Any, expected: np.ndarray, slack: float = 0.0) -> None:
    """LSE is float32 whatever the storage; -inf (empty rows) must match exactly.
    slack: as assert_close's."""
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-5, atol=1e-4 + slack)


def make_qkv(
    batch: int, seq_q: int, seq_kv: int, heads: int, kv_heads: int, head_dim: int,
    head_dim_v: int = -1, dtype: str = "float32", seed: int = 0, magnitude: float = 1.0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q [batch, seq_q, heads, head_dim], k/v [batch, seq_kv, kv_heads, head_dim(_v)]."""
    rng = np.random.default_rng(seed)
    head_dim_v = head_dim if head_dim_v < 0 else head_dim_v
    q = rng.standard_normal((batch, seq_q, heads, head_dim)) * magnitude
    k = rng.standard_normal((batch, seq_kv, kv_heads, head_dim))
    v = rng.standard_normal((batch, seq_kv, kv_heads, head_dim_v))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def rope_reference(
    x: Any, positions: Any, style: str = "halves", theta: float = 10000.0, rotary_dim: int = 0
) -> np.ndarray:
    """x [batch, seq, heads, head_dim] rotated in float64, from the definition
    (include/qkv/rope.h): token t of batch b is at position p = positions[b] + t,
    and pair i, (i, i + rd/2) for "halves" or (2i, 2i + 1) for "interleaved",
    turns by the angle p * theta^(-2i / rd); dimensions past rd stay as they are."""
    x = np.array(x, dtype=np.float64)
    rd = rotary_dim or x.shape[-1]
    i = np.arange(rd // 2)
    a, b = (2 * i, 2 * i + 1) if style == "interleaved" else (i, i + rd // 2)
    p = np.asarray(positions)[:, None] + np.arange(x.shape[1])[None, :]  # [batch, seq]
    angle = p[:, :, None, None] * float(theta) ** (-2.0 * i / rd)       # [batch, seq, 1, rd/2]
    xa, xb = x[..., a], x[..., b]  # fancy indexing: copies
    x[..., a] = xa * np.cos(angle) - xb * np.sin(angle)
    x[..., b] = xa * np.sin(angle) + xb * np.cos(angle)
    return x
