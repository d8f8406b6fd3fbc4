"""Decode with a KV cache: ``qkv.KVCache``, ``qkv.attention_with_kvcache``,
``qkv.Rope`` and ``qkv.apply_rope`` (the C++ ``qkv/kv_cache.h`` and ``qkv/rope.h``).

    >>> cache = qkv.KVCache(batch=2, capacity=4096, kv_heads=2, head_dim=128)
    >>> rope = qkv.Rope()  # "halves", theta 10000
    >>> o = qkv.attention_with_kvcache(q_prompt, cache, k_prompt, v_prompt, rope=rope, causal=True)
    >>> o = qkv.attention_with_kvcache(q, cache, k, v, rope=rope, causal=True)  # a step: seq 1
"""

from __future__ import annotations

import operator
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _arrays, _qkv

__all__ = ["KVCache", "Rope", "apply_rope", "attention_with_kvcache"]

_ROPE_STYLES = ("halves", "interleaved")


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding (``qkv::Rope``).

    Pair ``(a, b)`` of a row at position ``p`` turns by the angle
    ``p * theta ** (-2 i / rotary_dim)``, where pair i is ``(i, i + rotary_dim / 2)``
    for ``style="halves"`` (GPT-NeoX, Llama in Hugging Face, FlashAttention's
    default) or ``(2 i, 2 i + 1)`` for ``style="interleaved"`` (GPT-J, RoFormer).
    Only the leading ``rotary_dim`` dimensions turn (0 = all of head_dim; it
    must be even and at most head_dim, checked when the rope is used).
    Angles are computed in float64.
    """

    style: str = "halves"
    theta: float = 10000.0
    rotary_dim: int = 0

    def __post_init__(self) -> None:
        if self.style not in _ROPE_STYLES:
            raise ValueError(f'rope style must be "halves" or "interleaved", not {self.style!r}')
        object.__setattr__(self, "theta", float(self.theta))
        object.__setattr__(self, "rotary_dim", operator.index(self.rotary_dim))


def _rope_args(rope: Optional[Rope]) -> Optional[Tuple[str, float, int]]:
    """A rope as the binding takes it: (style, theta, rotary_dim)."""
    if rope is None:
        return None
    if not isinstance(rope, Rope):
        raise TypeError(f"rope must be a qkv.Rope or None, not {type(rope).__name__}")
    return (rope.style, rope.theta, rope.rotary_dim)


def _dtype_name(dtype: Any) -> str:
    """"float16" for "float16", np.float16, np.dtype("float16") or torch.float16."""
    if isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name[len("torch."):]
    try:
        return np.dtype(dtype).name
    except TypeError:
        return name


class KVCache:
    """The keys and values of one attention layer, kept across decode steps (``qkv::KVCache``).

    Storage is a pool of pages of ``page_size`` tokens::

        k pages  [num_pages, page_size, kv_heads, head_dim]     dtype
        v pages  [num_pages, page_size, kv_heads, head_dim_v]   dtype
        int8: one float32 scale per (token, kv head), value = scale * int8

    Token j of sequence b lives in page ``block_table[b, j // page_size]``. A
    contiguous cache (``page_size=0``) is one page of ``capacity`` tokens per
    sequence. The pool is allocated (zeroed) here and owned by the cache; the
    tokens of sequence b are ``[0, lengths[b])``. On x86 CPUs with AVX2 or
    AVX512-VNNI (the scores on AMX-INT8 where present: the same integers),
    attention over an int8 cache runs in integer arithmetic with q and the
    probabilities as 16-bit fixed point: within a stated bound of the float
    computation, far below the int8 rounding itself (docs/design.md).

    Args:
        batch: sequences.
        capacity: the most tokens one sequence can hold.
        kv_heads, head_dim: of the keys; head_dim_v of the values (None = head_dim).
        dtype: storage, "float16", "bfloat16", "float32" or "int8" (symmetric,
            a scale per token and kv head); NumPy and PyTorch dtypes also work.
        page_size: tokens per page; 0 = contiguous.
        num_pages: pages in the pool (paged only); 0 = batch * ceil(capacity / page_size).

    Calls on one cache are serialized by a lock (the compute itself runs
    without the GIL), so a cache may be shared between threads.

    Raises:
        ValueError: a bad size, dtype or page layout; the message names it.
    """

    def __init__(
        self,
        batch: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        head_dim_v: Optional[int] = None,
        dtype: Any = "float16",
        page_size: int = 0,
        num_pages: int = 0,
    ) -> None:
        index = operator.index
        self._cache = _qkv.KVCache(
            index(batch), index(capacity), index(kv_heads), index(head_dim),
            0 if head_dim_v is None else index(head_dim_v), _dtype_name(dtype),
            index(page_size), index(num_pages),
        )
        self._lock = threading.Lock()

    # --- configuration ------------------------------------------------------

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor's arguments (head_dim_v resolved): ``KVCache(**c.config)`` is a twin."""
        return self._cache.config

    @property
    def batch(self) -> int:
        return self._cache.config["batch"]

    @property
    def capacity(self) -> int:
        return self._cache.config["capacity"]

    @property
    def kv_heads(self) -> int:
        return self._cache.config["kv_heads"]

    @property
    def head_dim(self) -> int:
        return self._cache.config["head_dim"]

    @property
    def head_dim_v(self) -> int:
        return self._cache.config["head_dim_v"]

    @property
    def dtype(self) -> str:
        """"float16", "bfloat16", "float32" or "int8"."""
        return self._cache.config["dtype"]

    @property
    def paged(self) -> bool:
        return self._cache.config["page_size"] > 0

    @property
    def page_size(self) -> int:
        """Tokens per page (capacity for a contiguous cache)."""
        return self._cache.page_size

    @property
    def num_pages(self) -> int:
        """Pages in the pool (batch for a contiguous cache)."""
        return self._cache.num_pages

    @property
    def pages_per_sequence(self) -> int:
        """``ceil(capacity / page_size)``: the columns of the block table."""
        return self._cache.pages_per_sequence

    @property
    def nbytes(self) -> int:
        """Bytes of K and V storage (int8 scales included)."""
        return self._cache.nbytes

    # --- state --------------------------------------------------------------

    @property
    def lengths(self) -> np.ndarray:
        """Tokens held by each sequence: a new int64 array [batch] (a copy)."""
        with self._lock:
            return np.array(self._cache.lengths, dtype=np.int64)

    def set_lengths(self, lengths: Any) -> None:
        """Sets the lengths (to reuse or truncate a cache): an int for every
        sequence, or [batch] ints, each in [0, capacity]. Tokens past a new
        length are kept but ignored, and overwritten by the next append."""
        values = _arrays.int_array(lengths, "lengths", np.int64)
        if values.ndim == 0:
            values = np.full(self.batch, values, dtype=np.int64)
        if values.ndim != 1:
            raise ValueError(f"lengths must be an int or [batch], not shape {list(values.shape)}")
        with self._lock:
            self._cache.set_lengths(values.tolist())

    @property
    def block_table(self) -> np.ndarray:
        """The page of each (sequence, page index): a new int32 array
        [batch, pages_per_sequence] (a copy). The default gives sequence b the
        pages ``b * pages_per_sequence + i``."""
        with self._lock:
            table = np.array(self._cache.block_table, dtype=np.int32)
        return table.reshape(self.batch, self.pages_per_sequence)

    def set_block_table(self, table: Any) -> None:
        """Sets the block table: ints [batch, pages_per_sequence], each in
        [0, num_pages). The pages' contents stay where they are."""
        values = _arrays.int_array(table, "block_table", np.int32)
        expected = (self.batch, self.pages_per_sequence)
        if values.shape != expected:
            raise ValueError(
                f"block_table has shape {list(values.shape)} but must be "
                f"[batch, pages_per_sequence] = {list(expected)}"
            )
        with self._lock:
            self._cache.set_block_table(values.ravel().tolist())

    def append(self, k_new: Any, v_new: Any, rope: Optional[Rope] = None) -> None:
        """Appends ``k_new [batch, n, kv_heads, head_dim]`` and ``v_new [batch,
        n, kv_heads, head_dim_v]`` (float32, float16 or bfloat16, any array
        kind and strides with a contiguous last dimension) at each sequence's
        length; the keys are rotated by ``rope`` at positions ``length + t``
        first when given. Lengths grow by n.

        Raises:
            ValueError: past the capacity, mismatched shapes, a bad rope;
                everything is checked first, so the cache is then unchanged.
            TypeError: an unsupported dtype.
        """
        _, _, (k_new, v_new) = _arrays.prepare("KVCache.append", k_new=k_new, v_new=v_new)
        rope_args = _rope_args(rope)
        with self._lock:
            self._cache.append(k_new, v_new, rope_args)

    def read_key(self, b: int, j: int, kv_head: int) -> np.ndarray:
        """Key of token j of sequence b, kv head kv_head, widened to a new
        float32 NumPy array [head_dim] (for tests and debugging). j may be any
        slot in [0, capacity); those at or past lengths[b] hold whatever was
        last written there (zeros at first)."""
        with self._lock:
            return self._cache.read_key(b, j, kv_head)

    def read_value(self, b: int, j: int, kv_head: int) -> np.ndarray:
        """Value of token j of sequence b, kv head kv_head, as float32 [head_dim_v]; see read_key."""
        with self._lock:
            return self._cache.read_value(b, j, kv_head)

    def __repr__(self) -> str:
        c = self.config
        layout = f"page_size={c['page_size']}, num_pages={self.num_pages}" if self.paged else "contiguous"
        return (
            f"qkv.KVCache(batch={c['batch']}, capacity={c['capacity']}, kv_heads={c['kv_heads']}, "
            f"head_dim={c['head_dim']}, head_dim_v={c['head_dim_v']}, dtype={c['dtype']!r}, "
            f"{layout}, lengths={self.lengths.tolist()})"
        )


def attention_with_kvcache(
    q: Any,
    cache: KVCache,
    k_new: Any = None,
    v_new: Any = None,
    *,
    rope: Optional[Rope] = None,
    causal: bool = False,
    window: Optional[Tuple[int, int]] = (-1, -1),
    scale: Optional[float] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    sinks: Any = None,
    return_lse: bool = False,
    num_threads: Optional[int] = None,
    num_splits: int = 0,
    exact_bf16_probs: bool = False,
) -> Any:
    """Attention against a cache, as FlashAttention's ``flash_attn_with_kvcache``.

    Shapes::

        q      [batch, seq_q,   heads,    head_dim]
        k_new  [batch, seq_new, kv_heads, head_dim]     optional, with v_new
        v_new  [batch, seq_new, kv_heads, head_dim_v]
        out    [batch, seq_q,   heads,    head_dim_v]   same dtype and kind as q
        lse    [batch, heads,   seq_q]                  float32, natural log

    First appends k_new/v_new (if given) at each sequence's length (the cache
    grows by seq_new), then attends q over the cached tokens ``[0, length)`` of
    each sequence, with the semantics of ``qkv.attention``: the queries are the
    last seq_q positions, so ``causal`` (always bottom-right), ``window`` and
    ALiBi distances count from there. With ``rope``, q and k_new are rotated at
    their positions (``length + t`` for the new keys, ``length - seq_q + t``
    for the queries, lengths after the append); q itself is left unchanged.

    q (float32, float16 or bfloat16) need not have the cache's dtype; k_new and
    v_new are any of those three and are converted to it on the way in. Arrays
    are NumPy, PyTorch (CPU) or DLPack, read in place; out and lse are new
    arrays of q's kind. With a few query rows per kv head the split-KV decode
    kernel reads each cached byte once; ``num_splits`` chunks each sequence
    (0 = chosen from the shape and the threads).

    Args:
        q, k_new, v_new: shapes above.
        cache: the ``qkv.KVCache`` (its batch, kv_heads, head_dim and
            head_dim_v must match).
        rope: a ``qkv.Rope`` to rotate q and k_new by, or None.
        causal, window, scale, softcap, alibi_slopes, sinks, return_lse,
            num_threads, exact_bf16_probs: as in ``qkv.attention``.
        num_splits: decode chunks per (sequence, kv head); 0 = auto.

    Returns:
        ``out``, or ``(out, lse)`` when ``return_lse`` is true.

    Raises:
        ValueError: inconsistent shapes, past the capacity, bad options; the
            message names the argument. Nothing is written and the cache is
            unchanged.
        TypeError: an unsupported dtype or a cache that is not a qkv.KVCache.
    """
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a qkv.KVCache, not {type(cache).__name__}")
    empty, float32, (q, k_new, v_new, alibi_slopes, sinks) = _arrays.prepare(
        "qkv.attention_with_kvcache",
        q=q, k_new=k_new, v_new=v_new, alibi_slopes=alibi_slopes, sinks=sinks,
    )
    if q.ndim != 4:
        raise ValueError(f"q must have rank 4 but has shape {list(q.shape)}")
    batch, seq_q, heads, _ = q.shape
    out = empty((batch, seq_q, heads, cache.head_dim_v), dtype=q.dtype)
    lse = empty((batch, heads, seq_q), dtype=float32) if return_lse else None
    rope_args = _rope_args(rope)
    with cache._lock:
        _qkv.attention_with_kvcache(
            q, cache._cache, out,
            k_new=k_new,
            v_new=v_new,
            lse=lse,
            rope=rope_args,
            causal=bool(causal),
            window=_arrays.window(window),
            scale=_arrays.scale(scale),
            softcap=float(softcap),
            alibi_slopes=alibi_slopes,
            sinks=sinks,
            num_threads=_arrays.threads(num_threads),
            num_splits=operator.index(num_splits),
            exact_bf16_probs=bool(exact_bf16_probs),
        )
    return (out, lse) if return_lse else out


def apply_rope(x: Any, positions: Any, rope: Rope) -> None:
    """Rotates ``x [batch, seq, heads, head_dim]`` in place by ``rope``: token t
    of batch b is at position ``positions[b] + t``.

    x is a writable float32, float16 or bfloat16 array (NumPy, PyTorch or
    DLPack; any strides with a contiguous last dimension). positions is one
    int for every batch or [batch] ints, each >= 0.

    Raises:
        ValueError: a bad shape, position or rope, or a read-only x (x unchanged).
        TypeError: an unsupported dtype.
    """
    if not isinstance(rope, Rope):
        raise TypeError(f"rope must be a qkv.Rope, not {type(rope).__name__}")
    _, _, (x,) = _arrays.prepare("qkv.apply_rope", x=x)
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError("x must be writable: apply_rope rotates it in place")
    starts = _arrays.int_array(positions, "positions", np.int64)
    if starts.ndim == 0:
        starts = np.full(x.shape[0] if x.ndim > 0 else 1, starts, dtype=np.int64)
    if starts.ndim != 1:
        raise ValueError(f"positions must be an int or [batch], not shape {list(starts.shape)}")
    _qkv.apply_rope(x, starts, (rope.style, rope.theta, rope.rotary_dim))
