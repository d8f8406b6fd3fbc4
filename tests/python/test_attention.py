"""qkv.attention on NumPy arrays: parity with the float64 reference over the
option grid, strided (zero-copy) inputs, and errors on bad input."""

from __future__ import annotations

import importlib.metadata
import inspect
import tracemalloc

import numpy as np
import pytest

import qkv
from qkv import _qkv
from reference import assert_close, assert_lse_close, attention_reference, make_qkv

B, SQ, SK, H, HKV, D = 2, 7, 11, 4, 2, 16


def _mask(shape, kind, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "bool":
        return rng.random(shape) < 0.7
    m = rng.standard_normal(shape).astype(np.float32)
    m[rng.random(shape) < 0.2] = -np.inf  # hidden keys, as additive masks do
    return m


# name -> (shape overrides, options). Shapes default to B, SQ, SK, H, HKV, D.
CASES = {
    "plain": ({}, {}),
    "mha": ({"kv_heads": H}, {}),
    "mqa": ({"kv_heads": 1}, {}),
    "gqa4": ({"heads": 8, "kv_heads": 2}, {}),
    "head_dim_v": ({"head_dim_v": 5}, {}),
    "odd_head_dim": ({"head_dim": 7}, {}),
    "scale": ({}, {"scale": 0.3}),
    "big_logits": ({"magnitude": 300.0}, {}),
    "causal_br": ({}, {"causal": True}),
    "causal_br_sq_gt_sk": ({"seq_q": 13, "seq_kv": 5}, {"causal": True}),  # empty rows
    "causal_tl": ({}, {"causal": True, "causal_align": "top-left"}),
    "causal_tl_sq_gt_sk": ({"seq_q": 13, "seq_kv": 5}, {"causal": True, "causal_align": "top-left"}),
    "window_left": ({}, {"window": (3, 0)}),
    "window_both": ({}, {"window": (2, 1)}),
    "window_diag": ({}, {"window": (0, 0)}),
    "window_right_only": ({}, {"window": (-1, 2)}),
    "window_none": ({}, {"window": None}),
    "softcap": ({"magnitude": 30.0}, {"softcap": 5.0}),
    "alibi_h": ({}, {"alibi_slopes": "h"}),
    "alibi_bh": ({}, {"alibi_slopes": "bh"}),
    "sinks": ({}, {"sinks": True}),
    "sinks_empty_rows": ({"seq_q": 13, "seq_kv": 5}, {"sinks": True, "causal": True}),
    "bool_mask_full": ({}, {"mask": ("bool", (B, H, SQ, SK))}),
    "bool_mask_2d": ({}, {"mask": ("bool", (SQ, SK))}),
    "bool_mask_b1": ({}, {"mask": ("bool", (B, 1, SQ, SK))}),
    "bool_mask_h_row": ({}, {"mask": ("bool", (1, H, 1, SK))}),
    "bool_mask_1d": ({}, {"mask": ("bool", (SK,))}),
    "float_mask_full": ({}, {"mask": ("float", (B, H, SQ, SK))}),
    "float_mask_3d": ({}, {"mask": ("float", (H, SQ, SK))}),
    "float_mask_col": ({}, {"mask": ("float", (B, 1, SQ, 1))}),
    "seq_kv_1": ({"seq_kv": 1}, {}),
    "seq_q_1_decode": ({"seq_q": 1, "seq_kv": 40}, {"causal": True}),
    "everything": (
        {"heads": 8, "kv_heads": 2, "head_dim_v": 9, "magnitude": 10.0},
        {"causal": True, "window": (4, 0), "softcap": 8.0, "alibi_slopes": "bh", "sinks": True,
         "mask": ("bool", (B, 1, SQ, SK)), "scale": 0.2},
    ),
}


def _run_case(name, dtype, return_lse=True):
    shape, options = CASES[name]
    dims = dict(batch=B, seq_q=SQ, seq_kv=SK, heads=H, kv_heads=HKV, head_dim=D)
    magnitude = shape.get("magnitude", 1.0)
    dims.update({k: v for k, v in shape.items() if k != "magnitude"})
    q, k, v = make_qkv(**dims, dtype=dtype, magnitude=magnitude)
    rng = np.random.default_rng(7)
    options = dict(options)
    heads, batch = dims["heads"], dims["batch"]
    if options.get("alibi_slopes") == "h":
        options["alibi_slopes"] = rng.uniform(0.1, 1.0, heads).astype(np.float32)
    elif options.get("alibi_slopes") == "bh":
        options["alibi_slopes"] = rng.uniform(0.1, 1.0, (batch, heads)).astype(np.float32)
    if options.get("sinks"):
        options["sinks"] = rng.standard_normal(heads).astype(np.float32)
    if "mask" in options:
        kind, mshape = options["mask"]
        mshape = tuple(heads if s == H else s for s in mshape)
        options["mask"] = _mask(mshape, kind)
    out, lse = qkv.attention(q, k, v, return_lse=True, **options)
    ref_o, ref_lse = attention_reference(q, k, v, **options)
    return out, lse, ref_o, ref_lse, v


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_float32(name):
    out, lse, ref_o, ref_lse, v = _run_case(name, "float32")
    assert out.dtype == np.float32 and lse.dtype == np.float32
    assert out.shape == ref_o.shape and lse.shape == ref_lse.shape
    assert_close(out, ref_o, "float32", np.abs(v).max())
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("name", ["plain", "gqa4", "causal_tl", "softcap", "float_mask_full", "everything"])
def test_matches_reference_float16(name):
    out, lse, ref_o, ref_lse, v = _run_case(name, "float16")
    assert out.dtype == np.float16 and lse.dtype == np.float32
    assert_close(out, ref_o, "float16", np.abs(v.astype(np.float32)).max())
    assert_lse_close(lse, ref_lse)


def test_empty_rows_give_zero_and_minus_inf():
    q, k, v = make_qkv(1, 6, 3, 2, 2, 8)
    mask = np.ones((6, 3), dtype=bool)
    mask[1] = False  # row 1 sees nothing through the mask
    out, lse = qkv.attention(q, k, v, causal=True, mask=mask, sinks=np.ones(2, np.float32),
                             return_lse=True)
    # bottom-right causal with seq_q 6 > seq_kv 3: rows 0..2 see no key.
    for row in (0, 1, 2):
        assert np.all(out[:, row] == 0) and np.all(np.isneginf(lse[:, :, row]))
    assert np.all(np.isfinite(lse[:, :, 3:]))


def test_float_mask_all_minus_inf_row_is_empty():
    q, k, v = make_qkv(1, 3, 4, 1, 1, 8)
    mask = np.zeros((3, 4), dtype=np.float32)
    mask[2] = -np.inf
    out, lse = qkv.attention(q, k, v, mask=mask, return_lse=True)
    assert np.all(out[0, 2] == 0) and np.isneginf(lse[0, 0, 2])
    assert not np.isnan(out).any()


def test_seq_kv_zero_gives_empty_rows():
    q, k, v = make_qkv(1, 3, 0, 2, 2, 4)
    out, lse = qkv.attention(q, k, v, return_lse=True)
    assert out.shape == (1, 3, 2, 4) and np.all(out == 0) and np.all(np.isneginf(lse))


def test_returns_only_out_without_lse():
    q, k, v = make_qkv(1, 4, 4, 2, 2, 8)
    out = qkv.attention(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (1, 4, 2, 8)


def test_thread_counts_agree():
    q, k, v = make_qkv(2, 33, 47, 4, 2, 32)
    one = qkv.attention(q, k, v, causal=True, num_threads=1)
    assert_close(qkv.attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True)[0],
                 "float32", np.abs(v).max())
    assert_close(one, qkv.attention(q, k, v, causal=True, num_threads=2).astype(np.float64),
                 "float32", np.abs(v).max())


# --- zero copy -------------------------------------------------------------


def _bhsd_views(dtype="float32"):
    """q/k/v as [batch, seq, heads, dim] views of [batch, heads, seq, dim] buffers."""
    q, k, v = make_qkv(2, 9, 13, 4, 2, 16, dtype=dtype)
    buffers = [np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v)]
    return (q, k, v), [b.transpose(0, 2, 1, 3) for b in buffers], buffers


def test_strided_inputs_give_the_contiguous_result():
    (q, k, v), views, _ = _bhsd_views()
    assert not views[0].flags.c_contiguous
    expected = qkv.attention(q, k, v, causal=True)
    np.testing.assert_array_equal(qkv.attention(*views, causal=True), expected)


def test_binding_sees_the_callers_memory():
    (_, _, _), views, buffers = _bhsd_views()
    for view, buf in zip(views, buffers):
        address, shape, strides = _qkv.view_info(view)
        assert address == buf.__array_interface__["data"][0]
        assert shape == view.shape
        assert strides == tuple(s // view.itemsize for s in view.strides)
    # stride-0 broadcast masks cross as they are, too
    mask = np.broadcast_to(np.ones((1, 1, 1, 13), dtype=bool), (2, 4, 9, 13))
    assert _qkv.view_info(mask)[2] == (0, 0, 0, 1)


def test_no_input_copy_is_allocated():
    # q is 16 MiB, the output 0.5 MiB: a copy of q would show in the peak.
    q = np.random.default_rng(0).standard_normal((1, 4, 4096, 256), dtype=np.float32)
    q = q.transpose(0, 2, 1, 3)  # [1, 4096, 4, 256] view of a [B, H, S, D] buffer
    q.flags.writeable = False
    k = np.ones((1, 4, 4, 256), dtype=np.float32)
    v = np.ones((1, 4, 4, 8), dtype=np.float32)
    qkv.attention(q[:, :8], k, v)  # warm-up: first-call allocations are not the point
    tracemalloc.start()
    try:
        out = qkv.attention(q, k, v)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == 4096 * 4 * 8 * 4
    assert peak < out.nbytes + (1 << 20), f"peak {peak} bytes: an input was copied"


def test_read_only_inputs_are_accepted():
    q, k, v = make_qkv(1, 5, 5, 2, 2, 8)
    for x in (q, k, v):
        x.flags.writeable = False
    mask = np.broadcast_to(np.tril(np.ones((5, 5), dtype=bool)), (1, 2, 5, 5))  # read-only
    assert_close(qkv.attention(q, k, v, mask=mask),
                 attention_reference(q, k, v, mask=mask)[0], "float32", np.abs(v).max())


class _DLPackOnly:
    """An array known only through DLPack (as a third-party framework's)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_any_dlpack_array_is_accepted():
    q, k, v = make_qkv(1, 5, 6, 2, 1, 8)
    out = qkv.attention(_DLPackOnly(q), _DLPackOnly(k), _DLPackOnly(v), causal=True)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, qkv.attention(q, k, v, causal=True))


# --- errors ----------------------------------------------------------------


def _good():
    return make_qkv(1, 4, 6, 4, 2, 8)


def test_wrong_rank():
    q, k, v = _good()
    with pytest.raises(ValueError, match=r"q must have rank 4 but has shape \[4, 4, 8\]"):
        qkv.attention(q[0], k, v)


@pytest.mark.parametrize("dtype", ["float64", "int32", "bool"])
def test_wrong_dtype_is_a_type_error(dtype):
    q, k, v = _good()
    with pytest.raises(TypeError, match=f"q must be float32, float16 or bfloat16, not {dtype}"):
        qkv.attention(q.astype(dtype), k, v)


def test_mismatched_dtypes():
    q, k, v = _good()
    with pytest.raises(TypeError, match=r"k dtype \(float16\) must match q dtype \(float32\)"):
        qkv.attention(q, k.astype(np.float16), v)


def test_mismatched_head_dim():
    q, k, v = _good()
    with pytest.raises(ValueError, match=r"head_dim of k \(4\) must equal head_dim of q \(8\)"):
        qkv.attention(q, k[..., :4], v)


def test_mismatched_seq_kv():
    q, k, v = _good()
    with pytest.raises(ValueError, match="v must have the seq_kv and kv_heads of k"):
        qkv.attention(q, k, v[:, :3])


def test_heads_not_divisible():
    q, k, v = make_qkv(1, 4, 6, 8, 3, 8)
    with pytest.raises(ValueError, match=r"kv_heads \(3\) must divide heads \(8\)"):
        qkv.attention(q, k, v)


def test_non_contiguous_innermost_dimension():
    q, k, v = make_qkv(1, 4, 6, 4, 2, 16)
    with pytest.raises(ValueError, match="q must have a contiguous innermost dimension"):
        qkv.attention(q[..., ::2], k[..., ::2], v)
    with pytest.raises(ValueError, match="v must have a contiguous innermost dimension"):
        qkv.attention(q, k, np.asfortranarray(v))


def test_bad_mask():
    q, k, v = _good()
    with pytest.raises(ValueError, match="does not broadcast"):
        qkv.attention(q, k, v, mask=np.ones((4, 5), dtype=bool))
    with pytest.raises(TypeError, match="mask must be bool or float32, not int64"):
        qkv.attention(q, k, v, mask=np.ones((4, 6), dtype=np.int64))
    with pytest.raises(ValueError, match="mask must have rank 1 to 4"):
        qkv.attention(q, k, v, mask=np.ones((), dtype=bool))


def test_bad_options():
    q, k, v = _good()
    with pytest.raises(ValueError, match="causal_align must be"):
        qkv.attention(q, k, v, causal=True, causal_align="top")
    with pytest.raises(ValueError, match="window must be a pair"):
        qkv.attention(q, k, v, window=3)
    with pytest.raises(ValueError, match=r"window left \(-2\)"):
        qkv.attention(q, k, v, window=(-2, 0))
    with pytest.raises(ValueError, match="softcap"):
        qkv.attention(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match="scale"):
        qkv.attention(q, k, v, scale=float("inf"))
    with pytest.raises(ValueError, match="alibi_slopes has shape"):
        qkv.attention(q, k, v, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match="sinks has shape"):
        qkv.attention(q, k, v, sinks=np.ones(2))
    with pytest.raises(ValueError, match=r"num_threads \(-1\)"):
        qkv.attention(q, k, v, num_threads=-1)


def test_not_an_array():
    _, k, v = _good()
    with pytest.raises(TypeError, match="q must be an array"):
        qkv.attention([[1.0]], k, v)


def test_error_leaves_nothing_half_done():
    q, k, v = _good()
    with pytest.raises(ValueError):
        qkv.attention(q, k, v, mask=np.ones((4, 5), dtype=bool), return_lse=True)


# --- packaging -------------------------------------------------------------


def test_version_matches_the_package_metadata():
    assert qkv.__version__ == importlib.metadata.version("qkv")


def test_signature_and_docs():
    params = inspect.signature(qkv.attention).parameters
    assert list(params) == ["q", "k", "v", "causal", "causal_align", "window", "scale", "softcap",
                            "alibi_slopes", "sinks", "mask", "return_lse", "num_threads",
                            "exact_bf16_probs"]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(params)[3:])
    assert "[batch, seq_q,  heads,    head_dim]" in qkv.attention.__doc__
    assert _qkv.attention.__doc__ and _qkv.view_info.__doc__


def test_sink_far_above_the_scores():
    # exp(sink - max score) overflows float64 here: the reference shifts by
    # the larger of the two, so lse ~ sink and o ~ 0, as qkv gives.
    q, k, v = make_qkv(1, 5, 7, 2, 2, 16, 16, "float32", seed=3)
    sinks = np.array([800.0, -5.0], dtype=np.float32)
    want_o, want_lse = attention_reference(q, k, v, sinks=sinks)
    assert np.all(np.isfinite(want_lse)) and np.allclose(want_lse[:, 0], 800.0)
    assert np.abs(want_o[:, :, 0]).max() < 1e-300
    o, lse = qkv.attention(q, k, v, sinks=sinks, return_lse=True)
    assert_close(o, want_o, "float32")
    assert_lse_close(lse, want_lse)
