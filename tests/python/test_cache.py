"""qkv.KVCache, qkv.attention_with_kvcache, qkv.Rope / qkv.apply_rope and
qkv.attention_varlen: decode steps against the float64 reference over the
cache's logical contents, paged == contiguous, RoPE against NumPy, varlen ==
per-sequence qkv.attention, and errors that leave everything unchanged."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import qkv
from reference import assert_close, assert_lse_close, attention_reference, make_qkv, rope_reference

# batch, heads, kv_heads (GQA group 2), head_dim, head_dim_v (!= head_dim), capacity
B, H, HKV, D, DV, CAP = 2, 4, 2, 16, 12, 24
CACHE_DTYPES = ["float16", "bfloat16", "float32", "int8"]


def _randn(rng, shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


def _kv(rng, n, batch=B):
    """k_new [batch, n, HKV, D], v_new [batch, n, HKV, DV], float32."""
    return _randn(rng, (batch, n, HKV, D)), _randn(rng, (batch, n, HKV, DV))


def _logical(cache, b):
    """Sequence b's cached keys and values as read back, [1, length, kv_heads, dim] float32."""
    length = int(cache.lengths[b])
    k = np.zeros((1, length, cache.kv_heads, cache.head_dim), np.float32)
    v = np.zeros((1, length, cache.kv_heads, cache.head_dim_v), np.float32)
    for j in range(length):
        for h in range(cache.kv_heads):
            k[0, j, h] = cache.read_key(b, j, h)
            v[0, j, h] = cache.read_value(b, j, h)
    return k, v


def _snapshot(cache):
    """Every slot of every sequence (not only [0, length)), to show nothing was written."""
    return [[cache.read_key(b, j, h).copy() for j in range(cache.capacity) for h in range(cache.kv_heads)]
            for b in range(cache.batch)]


def _fixed_point_slack(q, k, v, scale):
    """How far an int8 cache's integer path may move o and lse from the float
    computation over the same K/V (the bound of docs/design.md and of the C++
    test Int8InFixedPointStaysWithinItsBound, taken over the whole call): q as
    16-bit fixed point moves a score by at most e = max|q| scale / ln 2 / 65278
    * max_j sum_d |k_jd| (log2 units), so o by ln 2 e 2 max|v| and lse by ln 2 e;
    each block's weights as 16-bit fixed point move o by at most max|v| / 65534
    per key. x1.5 margin. (AVX2 takes the path from head_dim 16, AVX-512 from 32.)"""
    e = np.abs(q).max(initial=0.0) * scale / np.log(2.0) / 65278.0 * np.abs(k).sum(axis=-1).max(initial=0.0)
    v_max = np.abs(v).max(initial=0.0)
    return (1.5 * (np.log(2.0) * e * 2 * v_max + v_max * k.shape[1] / 65534.0),
            1.5 * np.log(2.0) * e)


def _check(cache, q, o, lse, **options):
    """o and lse against the reference over the cache's logical contents, one
    sequence at a time (lengths differ). The contents are what the kernels
    read, so the tolerance is float32's whatever the cache dtype, plus, for
    int8, what its integer path's fixed point may add (_fixed_point_slack)."""
    for b in range(cache.batch):
        k, v = _logical(cache, b)
        opts = dict(options)
        if opts.get("alibi_slopes") is not None and np.ndim(opts["alibi_slopes"]) == 2:
            opts["alibi_slopes"] = opts["alibi_slopes"][b]
        ref_o, ref_lse = attention_reference(q[b:b + 1], k, v, **opts)
        o_slack = lse_slack = 0.0
        if cache.dtype == "int8":
            scale = opts.get("scale") or 1.0 / np.sqrt(cache.head_dim)
            o_slack, lse_slack = _fixed_point_slack(np.asarray(q[b:b + 1], np.float64), k, v, scale)
        assert_close(o[b:b + 1], ref_o, "float32", np.abs(v).max(initial=1.0), slack=o_slack)
        assert_lse_close(lse[b:b + 1], ref_lse, slack=lse_slack)


def _check_stored(stored, x, dtype):
    """A row read back from a cache of `dtype` is x stored in that dtype."""
    if dtype == "float32":
        np.testing.assert_array_equal(stored, x)
    elif dtype == "float16":
        np.testing.assert_array_equal(stored, x.astype(np.float16).astype(np.float32))
    elif dtype == "bfloat16":  # round to nearest: relative error <= 2^-9
        np.testing.assert_allclose(stored, x, rtol=2.0**-8, atol=0)
    else:  # int8: scale = max|x| / 127, error <= scale / 2
        np.testing.assert_allclose(stored, x, rtol=0, atol=np.abs(x).max() / 127 * 0.5001)


# --- decode against the reference ---------------------------------------------


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
def test_decode_steps_match_reference(dtype):
    rng = np.random.default_rng(0)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype=dtype)
    cache.append(*_kv(rng, 6))
    cache.set_lengths([6, 2])  # sequences of different lengths; 1's tail will be overwritten
    for step in range(3):
        q = _randn(rng, (B, 1, H, D))
        k_new, v_new = _kv(rng, 1)
        o, lse = qkv.attention_with_kvcache(q, cache, k_new, v_new, causal=True, return_lse=True)
        assert o.dtype == np.float32 and o.shape == (B, 1, H, DV) and lse.shape == (B, H, 1)
        assert cache.lengths.tolist() == [7 + step, 3 + step]
        for b, j in ((0, 6 + step), (1, 2 + step)):
            for h in range(HKV):
                _check_stored(cache.read_key(b, j, h), k_new[b, 0, h], dtype)
                _check_stored(cache.read_value(b, j, h), v_new[b, 0, h], dtype)
        _check(cache, q, o, lse, causal=True)


@pytest.mark.parametrize("q_dtype", ["float16", "float32"])
def test_q_dtype_is_independent_of_the_cache(q_dtype):
    rng = np.random.default_rng(1)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype="bfloat16")
    k, v = _kv(rng, 5)
    cache.append(k.astype(np.float16), v)  # k_new/v_new of any float dtype
    q = _randn(rng, (B, 2, H, D), q_dtype)
    o, lse = qkv.attention_with_kvcache(q, cache, causal=True, return_lse=True)
    assert o.dtype == q_dtype and cache.lengths.tolist() == [5, 5]
    for b in range(B):
        ref_o, ref_lse = attention_reference(q[b:b + 1], *_logical(cache, b), causal=True)
        assert_close(o[b:b + 1], ref_o, q_dtype, 4.0)
        assert_lse_close(lse[b:b + 1], ref_lse)


# name -> options of attention_with_kvcache ("bh"/True: drawn below)
OPTIONS = {
    "no_mask": {},
    "window": {"causal": True, "window": (4, 0)},
    "softcap": {"softcap": 2.0, "scale": 0.9},
    "alibi_bh": {"causal": True, "alibi_slopes": "bh"},
    "sinks": {"sinks": True},
    "splits_1": {"causal": True, "num_splits": 1},
    "splits_3_one_thread": {"causal": True, "num_splits": 3, "num_threads": 1},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("seq_q", [1, 3])
def test_options_match_reference(name, seq_q):
    rng = np.random.default_rng(2)
    options = dict(OPTIONS[name])
    if options.get("alibi_slopes") == "bh":
        options["alibi_slopes"] = rng.uniform(0.1, 1.0, (B, H)).astype(np.float32)
    if options.get("sinks"):
        options["sinks"] = _randn(rng, H)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype="float16", page_size=4)
    cache.append(*_kv(rng, 9))
    cache.set_lengths([9, 5])
    q = _randn(rng, (B, seq_q, H, D))
    o, lse = qkv.attention_with_kvcache(q, cache, *_kv(rng, seq_q), return_lse=True, **options)
    options = {k: v for k, v in options.items() if k not in ("num_splits", "num_threads")}
    _check(cache, q, o, lse, **options)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_paged_equals_contiguous(dtype):
    rng = np.random.default_rng(3)
    contiguous = qkv.KVCache(B, CAP, HKV, D, DV, dtype=dtype)
    paged = qkv.KVCache(B, CAP, HKV, D, DV, dtype=dtype, page_size=5, num_pages=13)
    assert paged.pages_per_sequence == 5 and paged.block_table.tolist() == [[0, 1, 2, 3, 4],
                                                                            [5, 6, 7, 8, 9]]
    table = rng.permutation(13)[:10].reshape(B, 5).astype(np.int32)  # scattered, 3 pages spare
    paged.set_block_table(table)
    np.testing.assert_array_equal(paged.block_table, table)
    for seq_q in (7, 1, 1, 4, 1):  # a prompt, then steps that cross page boundaries
        q = _randn(rng, (B, seq_q, H, D))
        k_new, v_new = _kv(rng, seq_q)
        o_c, lse_c = qkv.attention_with_kvcache(q, contiguous, k_new, v_new, causal=True, return_lse=True)
        o_p, lse_p = qkv.attention_with_kvcache(q, paged, k_new, v_new, causal=True, return_lse=True)
        np.testing.assert_array_equal(o_p, o_c)
        np.testing.assert_array_equal(lse_p, lse_c)
    assert paged.lengths.tolist() == contiguous.lengths.tolist() == [14, 14]
    for b in range(B):
        for x, y in zip(_logical(paged, b), _logical(contiguous, b)):
            np.testing.assert_array_equal(x, y)


def test_config_and_nbytes():
    c = qkv.KVCache(B, CAP, HKV, D, dtype=np.float16)
    assert c.config == {"batch": B, "capacity": CAP, "kv_heads": HKV, "head_dim": D, "head_dim_v": D,
                        "dtype": "float16", "page_size": 0, "num_pages": 0}
    assert (c.batch, c.capacity, c.kv_heads, c.head_dim, c.head_dim_v, c.dtype) == (B, CAP, HKV, D, D, "float16")
    assert not c.paged and c.page_size == CAP and c.num_pages == B and c.pages_per_sequence == 1
    assert c.nbytes == B * CAP * HKV * (D + D) * 2
    assert c.lengths.dtype == np.int64 and c.lengths.tolist() == [0, 0]
    assert c.block_table.dtype == np.int32 and c.block_table.tolist() == [[0], [1]]
    p = qkv.KVCache(**{**c.config, "dtype": "int8", "page_size": 16, "head_dim_v": DV})
    assert p.paged and p.num_pages == 2 * B and p.pages_per_sequence == 2
    assert p.nbytes == 2 * B * 16 * HKV * (D + DV + 8)  # int8 K and V, a float32 scale each
    assert "page_size=16" in repr(p) and "'int8'" in repr(p)
    c.set_lengths(3)  # one length for every sequence
    assert c.lengths.tolist() == [3, 3]


# --- RoPE ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["halves", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [0, 6])
def test_append_rotates_keys_at_their_positions(style, rotary_dim):
    rng = np.random.default_rng(4)
    rope = qkv.Rope(style, theta=500000.0, rotary_dim=rotary_dim)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype="float32", page_size=8)
    cache.set_lengths([0, 9])  # positions start at each sequence's length
    k, v = _kv(rng, 4)
    cache.append(k, v, rope=rope)
    expected = rope_reference(k, [0, 9], style, 500000.0, rotary_dim)
    assert not np.allclose(expected[1], k[1], atol=0.1)  # the rotation is not a no-op
    for b, start in ((0, 0), (1, 9)):
        for t in range(4):
            for h in range(HKV):
                key = cache.read_key(b, start + t, h)
                np.testing.assert_allclose(key, expected[b, t, h], rtol=1e-6, atol=1e-6)
                if rotary_dim:
                    np.testing.assert_array_equal(key[rotary_dim:], k[b, t, h, rotary_dim:])
                np.testing.assert_array_equal(cache.read_value(b, start + t, h), v[b, t, h])


@pytest.mark.parametrize("style", ["halves", "interleaved"])
def test_apply_rope_matches_numpy(style):
    rng = np.random.default_rng(5)
    rope = qkv.Rope(style)
    buffer = _randn(rng, (B, H, 7, D))
    x = buffer.transpose(0, 2, 1, 3)  # [batch, seq, heads, head_dim] view, rotated in place
    expected = rope_reference(x, [3, 11], style)
    assert qkv.apply_rope(x, [3, 11], rope) is None
    np.testing.assert_allclose(buffer.transpose(0, 2, 1, 3), expected, rtol=1e-6, atol=1e-6)
    half = _randn(rng, (B, 7, H, D), "float16")
    expected = rope_reference(half, [5, 5], style)
    qkv.apply_rope(half, 5, rope)  # one position for every sequence
    assert_close(half, expected, "float16", np.abs(expected).max())


def test_attention_with_rope_rotates_q_and_k_new():
    rng = np.random.default_rng(6)
    rope = qkv.Rope("interleaved", rotary_dim=8)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype="float32")
    cache.set_lengths([2, 0])
    for seq_q in (5, 1):  # a prompt, then one decode step
        q = _randn(rng, (B, seq_q, H, D))
        q_before = q.copy()
        k, v = _kv(rng, seq_q)
        start = cache.lengths
        o, lse = qkv.attention_with_kvcache(q, cache, k, v, rope=rope, causal=True, return_lse=True)
        np.testing.assert_array_equal(q, q_before)  # q is read, not rotated in place
        stored = _logical(cache, 0)[0][0, start[0]:]
        np.testing.assert_allclose(stored, rope_reference(k, start, "interleaved", rotary_dim=8)[0],
                                   rtol=1e-6, atol=1e-6)
        # the queries sit at the last seq_q positions of each (grown) sequence
        q_rotated = rope_reference(q, cache.lengths - seq_q, "interleaved", rotary_dim=8)
        _check(cache, q_rotated, o, lse, causal=True)


# --- varlen ------------------------------------------------------------------

SEQLENS_Q = [3, 0, 5, 1]
SEQLENS_K = [4, 2, 5, 7]

VARLEN_OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "causal_top_left": {"causal": True, "causal_align": "top-left"},
    "window_softcap": {"window": (2, 1), "softcap": 3.0},
    "alibi_bh_sinks": {"alibi_slopes": "bh", "sinks": True},
}


@pytest.mark.parametrize("name", sorted(VARLEN_OPTIONS))
def test_varlen_equals_per_sequence_attention(name):
    rng = np.random.default_rng(7)
    options = dict(VARLEN_OPTIONS[name])
    batch = len(SEQLENS_Q)
    if options.get("alibi_slopes") == "bh":
        options["alibi_slopes"] = rng.uniform(0.1, 1.0, (batch, H)).astype(np.float32)
    if options.get("sinks"):
        options["sinks"] = _randn(rng, H)
    cu_q = np.concatenate([[0], np.cumsum(SEQLENS_Q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(SEQLENS_K)]).astype(np.int32)
    q = _randn(rng, (cu_q[-1], H, D))
    k = _randn(rng, (H, cu_k[-1], HKV, D))[0]  # any strides: a view of a larger buffer
    v = _randn(rng, (cu_k[-1], HKV, DV))
    o, lse = qkv.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **options)
    assert o.shape == (cu_q[-1], H, DV) and lse.shape == (H, cu_q[-1])
    for s in range(batch):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        opts = dict(options)
        if "alibi_slopes" in opts:
            opts["alibi_slopes"] = opts["alibi_slopes"][s]
        o_s, lse_s = qkv.attention(q[None, rows], k[None, keys], v[None, keys], return_lse=True, **opts)
        np.testing.assert_array_equal(o[rows], o_s[0])
        np.testing.assert_array_equal(lse[:, rows], lse_s[0])
        assert_close(o_s, attention_reference(q[None, rows], k[None, keys], v[None, keys], **opts)[0],
                     "float32", np.abs(v).max())


def test_varlen_float16_and_list_offsets():
    q, k, v = (x[0] for x in make_qkv(1, 9, 9, H, HKV, D, dtype="float16"))
    o = qkv.attention_varlen(q, k, v, [0, 4, 9], (0, 6, 9), causal=True)
    assert o.dtype == np.float16
    expected = np.concatenate([
        attention_reference(q[None, :4], k[None, :6], v[None, :6], causal=True)[0][0],
        attention_reference(q[None, 4:], k[None, 6:], v[None, 6:], causal=True)[0][0],
    ])
    assert_close(o, expected, "float16", np.abs(v.astype(np.float32)).max())


# --- errors ------------------------------------------------------------------


def test_append_past_capacity_changes_nothing():
    rng = np.random.default_rng(8)
    cache = qkv.KVCache(B, 8, HKV, D, DV, dtype="float16", page_size=3)
    cache.append(*_kv(rng, 2))
    cache.set_lengths([2, 7])
    before = _snapshot(cache)
    # sequence 0 has room, sequence 1 does not: nothing is written to either
    with pytest.raises(ValueError, match=r"appending 2 tokens to sequence 1 \(length 7\) exceeds the "
                                         r"cache capacity \(8\)"):
        cache.append(*_kv(rng, 2))
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        qkv.attention_with_kvcache(_randn(rng, (B, 2, H, D)), cache, *_kv(rng, 2))
    assert cache.lengths.tolist() == [2, 7]
    for x, y in zip(_snapshot(cache), before):
        np.testing.assert_array_equal(x, y)


def test_bad_lengths_and_block_tables_change_nothing():
    cache = qkv.KVCache(B, 8, HKV, D, page_size=4)
    cache.set_lengths([1, 2])
    with pytest.raises(ValueError, match=r"lengths\[1\] \(9\) must be in \[0, capacity \(8\)\]"):
        cache.set_lengths([0, 9])
    with pytest.raises(ValueError, match="lengths has 3 entries but the cache batch is 2"):
        cache.set_lengths([0, 1, 2])
    with pytest.raises(TypeError, match="lengths must hold integers, not float64"):
        cache.set_lengths([0.5, 1.0])
    assert cache.lengths.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"block_table\[1, 0\] \(4\) must be in \[0, num_pages \(4\)\)"):
        cache.set_block_table([[0, 1], [4, 2]])
    with pytest.raises(ValueError, match=r"block_table has shape \[4\] but must be \[batch, "
                                         r"pages_per_sequence\] = \[2, 2\]"):
        cache.set_block_table([0, 1, 2, 3])
    assert cache.block_table.tolist() == [[0, 1], [2, 3]]


def test_bad_cache_configs():
    with pytest.raises(ValueError, match='cache dtype must be "float16", "bfloat16", "float32" or "int8", '
                                         'not "float64"'):
        qkv.KVCache(1, 8, 1, 8, dtype="float64")
    with pytest.raises(ValueError, match=r"cache capacity \(0\) must be at least 1"):
        qkv.KVCache(1, 0, 1, 8)
    with pytest.raises(ValueError, match=r"cache page_size \(-1\) must be >= 0"):
        qkv.KVCache(1, 8, 1, 8, page_size=-1)
    with pytest.raises(TypeError):
        qkv.KVCache(1, 8.5, 1, 8)


def test_read_out_of_range():
    cache = qkv.KVCache(B, 8, HKV, D, DV)
    assert cache.read_key(1, 7, 1).shape == (D,) and cache.read_value(0, 0, 0).shape == (DV,)
    with pytest.raises(IndexError, match=r"j \(8\) must be in \[0, capacity \(8\)\)"):
        cache.read_key(0, 8, 0)
    with pytest.raises(IndexError, match=r"b \(-1\) must be in \[0, batch \(2\)\)"):
        cache.read_value(-1, 0, 0)
    with pytest.raises(IndexError, match=r"kv_head \(2\) must be in \[0, kv_heads \(2\)\)"):
        cache.read_key(0, 0, 2)


def test_bad_kvcache_attention_arguments():
    rng = np.random.default_rng(9)
    cache = qkv.KVCache(B, 8, HKV, D, DV, dtype="float32")
    q = _randn(rng, (B, 1, H, D))
    k, v = _kv(rng, 1)
    with pytest.raises(ValueError, match=r"q has shape \[2, 1, 4, 8\] but the cache has batch 2 and "
                                         r"head_dim 16"):
        qkv.attention_with_kvcache(q[..., :8], cache)
    with pytest.raises(ValueError, match="k_new and v_new must be given together"):
        qkv.attention_with_kvcache(q, cache, k)
    with pytest.raises(ValueError, match=r"num_splits \(-1\) must be >= 0"):
        qkv.attention_with_kvcache(q, cache, num_splits=-1)
    with pytest.raises(ValueError, match=r"kv_heads \(2\) must divide heads \(3\)"):
        qkv.attention_with_kvcache(q[:, :, :3], cache)
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, not float64"):
        qkv.attention_with_kvcache(q.astype(np.float64), cache)
    with pytest.raises(TypeError, match="cache must be a qkv.KVCache"):
        qkv.attention_with_kvcache(q, object())
    with pytest.raises(ValueError, match="rope: sequence 0 will hold 1 tokens, fewer than seq_q"):
        qkv.attention_with_kvcache(_randn(rng, (B, 2, H, D)), cache, k, v, rope=qkv.Rope())
    assert cache.lengths.tolist() == [0, 0]


def test_bad_ropes():
    with pytest.raises(ValueError, match='rope style must be "halves" or "interleaved"'):
        qkv.Rope("neox")
    x = np.zeros((1, 2, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"rope rotary_dim \(3\) must be even and in \[0, head_dim \(8\)\]"):
        qkv.apply_rope(x, 0, qkv.Rope(rotary_dim=3))
    with pytest.raises(ValueError, match="rope theta"):
        qkv.apply_rope(x, 0, qkv.Rope(theta=-1.0))
    with pytest.raises(ValueError, match=r"positions\[0\] \(-1\) must be >= 0"):
        qkv.apply_rope(x, -1, qkv.Rope())
    with pytest.raises(ValueError, match="positions has 2 entries but x has batch 1"):
        qkv.apply_rope(x, [0, 1], qkv.Rope())
    x.flags.writeable = False
    with pytest.raises(ValueError, match="x must be writable"):
        qkv.apply_rope(x, 0, qkv.Rope())
    with pytest.raises(TypeError, match="rope must be a qkv.Rope"):
        qkv.KVCache(1, 4, 1, 8).append(x, x, rope=("halves", 1e4, 0))


def _packed():
    q, k, v = (x[0] for x in make_qkv(1, 5, 7, H, HKV, D))
    return q, k, v


@pytest.mark.parametrize("cu_q, cu_k, error, match", [
    ([1, 5], [0, 7], ValueError, r"cu_seqlens_q\[0\] must be 0"),
    ([0, 4, 3, 5], [0, 2, 3, 7], ValueError, r"cu_seqlens_q must be non-decreasing: cu_seqlens_q\[2\] \(3\) "
                                             r"< cu_seqlens_q\[1\] \(4\)"),
    ([0, 5], [0, 6], ValueError, "cu_seqlens_k ends at 6 but the tensor holds 7 rows"),
    ([0, 2, 5], [0, 7], ValueError, "cu_seqlens_k has 2 entries but must have batch \\+ 1 = 3"),
    ([], [0, 7], ValueError, "cu_seqlens_q must have batch \\+ 1 >= 1 entries"),
    ([[0, 5]], [0, 7], ValueError, r"cu_seqlens_q must be \[batch \+ 1\] but has shape \[1, 2\]"),
    ([0.0, 5.0], [0, 7], TypeError, "cu_seqlens_q must hold integers, not float64"),
    ([0, 2**31], [0, 7], ValueError, "cu_seqlens_q has values outside the range of int32"),
])
def test_bad_cu_seqlens(cu_q, cu_k, error, match):
    q, k, v = _packed()
    with pytest.raises(error, match=match):
        qkv.attention_varlen(q, k, v, cu_q, cu_k)


def test_bad_varlen_arrays():
    q, k, v = _packed()
    with pytest.raises(ValueError, match=r"q must be \[total, heads, dim\] \(rank 3\) but has shape \[1, 5, 4, 16\]"):
        qkv.attention_varlen(q[None], k, v, [0, 5], [0, 7])
    with pytest.raises(TypeError, match=r"v dtype \(float16\) must match q dtype \(float32\)"):
        qkv.attention_varlen(q, k, v.astype(np.float16), [0, 5], [0, 7])
    with pytest.raises(ValueError, match=r"sequence 0: kv_heads \(2\) must divide heads \(3\)"):
        qkv.attention_varlen(q[:, :3], k, v, [0, 0, 5], [0, 0, 7])


# --- torch and packaging ----------------------------------------------------------


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    cache = qkv.KVCache(B, CAP, HKV, D, DV, dtype=torch.bfloat16, page_size=4)
    q, (k, v) = _randn(rng, (B, 2, H, D)), _kv(rng, 6)
    o = qkv.attention_with_kvcache(torch.from_numpy(q).bfloat16(), cache, torch.from_numpy(k),
                                   torch.from_numpy(v).bfloat16(), causal=True)
    assert isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16 and o.shape == (B, 2, H, DV)
    q_bf16 = torch.from_numpy(q).bfloat16().float().numpy()
    for b in range(B):
        ref_o = attention_reference(q_bf16[b:b + 1], *_logical(cache, b), causal=True)[0]
        assert_close(o[b:b + 1].float().numpy(), ref_o, "bfloat16", 4.0)

    x = torch.from_numpy(_randn(rng, (1, 3, H, D)))
    expected = rope_reference(x.numpy(), [4], "halves")
    qkv.apply_rope(x, torch.tensor([4]), qkv.Rope())  # a tensor, rotated in place
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6, atol=1e-6)

    qp, kp, vp = (torch.from_numpy(a) for a in _packed())
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 3, 7], dtype=torch.int32)
    o, lse = qkv.attention_varlen(qp, kp, vp, cu_q, cu_k, causal=True, return_lse=True)
    assert isinstance(o, torch.Tensor) and isinstance(lse, torch.Tensor)
    o_np = qkv.attention_varlen(qp.numpy(), kp.numpy(), vp.numpy(), cu_q.numpy(), cu_k.numpy(), causal=True)
    np.testing.assert_array_equal(o.numpy(), o_np)


def test_signatures_and_docs():
    params = inspect.signature(qkv.attention_with_kvcache).parameters
    assert list(params) == ["q", "cache", "k_new", "v_new", "rope", "causal", "window", "scale",
                            "softcap", "alibi_slopes", "sinks", "return_lse", "num_threads",
                            "num_splits", "exact_bf16_probs"]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(params)[4:])
    params = inspect.signature(qkv.attention_varlen).parameters
    assert list(params) == ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "causal", "causal_align",
                            "window", "scale", "softcap", "alibi_slopes", "sinks", "return_lse",
                            "num_threads"]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(params)[5:])
    for f in (qkv.KVCache, qkv.KVCache.append, qkv.attention_with_kvcache, qkv.attention_varlen,
              qkv.apply_rope, qkv.Rope):
        assert f.__doc__
    assert qkv.Rope() == qkv.Rope("halves", 10000, 0) and hash(qkv.Rope()) == hash(qkv.Rope())
