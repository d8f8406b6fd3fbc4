"""qkv.merge_attention: parts of the keys merge into the attention over all."""

import numpy as np
import pytest

import qkv


def _problem(seed=0, batch=2, seq_q=5, seq_kv=37, heads=4, kv_heads=2, dim=16):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-1, 1, (batch, seq_q, heads, dim)).astype(np.float32)
    k = rng.uniform(-1, 1, (batch, seq_kv, kv_heads, dim)).astype(np.float32)
    v = rng.uniform(-1, 1, (batch, seq_kv, kv_heads, dim)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("cuts", [(0, 16, 37), (0, 1, 30, 37), (0, 37)])
def test_parts_merge_into_the_attention_over_all_keys(cuts):
    q, k, v = _problem()
    want, want_lse = qkv.attention(q, k, v, return_lse=True)
    parts = [qkv.attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in zip(cuts, cuts[1:])]
    out, lse = qkv.merge_attention(parts)
    assert out.dtype == np.float32 and out.shape == want.shape and lse.shape == want_lse.shape
    np.testing.assert_allclose(out, want, atol=2e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=2e-6, atol=2e-6)


def test_float16_parts_and_empty_rows():
    q, k, v = _problem(1)
    q16, k16, v16 = (x.astype(np.float16) for x in (q, k, v))
    want = qkv.attention(q16, k16, v16)
    parts = [qkv.attention(q16, k16[:, a:b], v16[:, a:b], return_lse=True) for a, b in ((0, 20), (20, 37))]
    out, _ = qkv.merge_attention(parts)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), want.astype(np.float32), atol=2e-3)
    # Rows no part saw a key of: 0 and -inf, never NaN.
    empty = qkv.attention(q, k[:, :0], v[:, :0], return_lse=True)
    out, lse = qkv.merge_attention([empty, empty])
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_bad_parts_are_value_errors():
    q, k, v = _problem(2)
    a = qkv.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="parts is empty"):
        qkv.merge_attention([])
    b = qkv.attention(q[:, :3], k, v, return_lse=True)
    with pytest.raises(ValueError, match=r"parts\[1\]\.o has shape \[2, 3, 4, 16\] but o has \[2, 5, 4, 16\]"):
        qkv.merge_attention([a, b])


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    q, k, v = (torch.from_numpy(x) for x in _problem(3))
    want = qkv.attention(q, k, v)
    parts = [qkv.attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in ((0, 10), (10, 37))]
    out, lse = qkv.merge_attention(parts)
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    torch.testing.assert_close(out, want, atol=2e-6, rtol=0)
