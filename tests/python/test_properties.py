"""Property tests (hypothesis): random shapes and options against the float64
reference, and layout invariance. Example counts are modest to keep the whole
Python suite well under a minute on 2 cores.

The examples are the same on every run (derandomized), so `make test` and CI
cannot turn red by chance; QKV_HYPOTHESIS_EXPLORE=1 draws new ones each run
(and keeps what fails in .hypothesis/ to replay)."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkv
from reference import assert_close, assert_lse_close, attention_reference, make_qkv, score_bound

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=not os.environ.get("QKV_HYPOTHESIS_EXPLORE"))


@st.composite
def problems(draw):
    """(q, k, v, options, dtype) over shapes that include 0 and 1 and GQA groups."""
    batch = draw(st.integers(1, 2))
    seq_q = draw(st.integers(0, 20))
    seq_kv = draw(st.integers(0, 20))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 40))
    head_dim_v = draw(st.one_of(st.just(head_dim), st.integers(1, 40)))
    dtype = draw(st.sampled_from(["float32", "float32", "float16"]))
    seed = draw(st.integers(0, 2**32 - 1))
    magnitude = draw(st.sampled_from([0.1, 1.0, 50.0]))
    q, k, v = make_qkv(batch, seq_q, seq_kv, heads, kv_heads, head_dim, head_dim_v,
                       dtype=dtype, seed=seed, magnitude=magnitude)

    rng = np.random.default_rng(seed)
    options = {}
    if draw(st.booleans()):
        options["causal"] = True
        options["causal_align"] = draw(st.sampled_from(["bottom-right", "top-left"]))
    if draw(st.booleans()):
        options["window"] = (draw(st.integers(-1, 6)), draw(st.integers(-1, 6)))
    if draw(st.booleans()):
        options["softcap"] = draw(st.sampled_from([1.0, 5.0, 30.0]))
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.01, 2.0))
    alibi = draw(st.sampled_from([None, "h", "bh"]))
    if alibi == "h":
        options["alibi_slopes"] = rng.uniform(0, 1, heads).astype(np.float32)
    elif alibi == "bh":
        options["alibi_slopes"] = rng.uniform(0, 1, (batch, heads)).astype(np.float32)
    if draw(st.booleans()):
        options["sinks"] = rng.standard_normal(heads).astype(np.float32)
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind:
        # Each dimension of [batch, heads, seq_q, seq_kv] kept or broadcast (1);
        # leading dimensions may be dropped (right-aligned broadcasting).
        full = (batch, heads, seq_q, seq_kv)
        shape = tuple(n if draw(st.booleans()) else 1 for n in full)
        shape = shape[draw(st.integers(0, 3)):]
        if mask_kind == "bool":
            mask = rng.random(shape) < 0.75
        else:
            mask = rng.standard_normal(shape).astype(np.float32)
            mask[rng.random(shape) < 0.15] = -np.inf
        options["mask"] = mask
    return q, k, v, options, dtype


@SETTINGS
@given(problems())
def test_matches_reference(problem):
    q, k, v, options, dtype = problem
    out, lse = qkv.attention(q, k, v, return_lse=True, **options)
    ref_o, ref_lse = attention_reference(q, k, v, **options)
    assert out.dtype == q.dtype and out.shape == ref_o.shape
    v_max = float(np.abs(v.astype(np.float32)).max()) if v.size else 1.0
    assert_close(out, ref_o, dtype, v_max, score_bound(q, k, options.get("scale")))
    assert_lse_close(lse, ref_lse)
    assert not np.isnan(out.astype(np.float32)).any()


@SETTINGS
@given(problems(), st.permutations(range(4)))
def test_memory_layout_does_not_change_the_result(problem, order):
    """The same logical q/k/v stored in any dimension order (innermost kept
    contiguous) give bit-identical outputs: the binding passes strides, not copies."""
    q, k, v, options, _ = problem
    order = [d for d in order if d != 3] + [3]

    def restride(x):  # same values, memory laid out in `order`
        return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))

    expected = qkv.attention(q, k, v, num_threads=1, **options)
    actual = qkv.attention(restride(q), restride(k), restride(v), num_threads=1, **options)
    np.testing.assert_array_equal(actual, expected)
