"""PyTorch: qkv.torch.scaled_dot_product_attention against
torch.nn.functional.scaled_dot_product_attention, qkv.attention on tensors,
zero-copy, and errors. Skipped when torch is not installed (make test-peers
installs it)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import qkv  # noqa: E402
import qkv.torch  # noqa: E402
from qkv import _qkv  # noqa: E402
from reference import assert_close, attention_reference  # noqa: E402

sdpa = qkv.torch.scaled_dot_product_attention

# Both sides round o to the storage type once; float32 differs only by the
# summation order.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _bhsd(batch, heads, seq, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, seq, dim, generator=g).to(dtype)


def _inputs(batch=2, heads=4, kv_heads=4, seq_q=9, seq_kv=13, dim=16, dim_v=16, dtype=torch.float32):
    return (_bhsd(batch, heads, seq_q, dim, dtype, 1), _bhsd(batch, kv_heads, seq_kv, dim, dtype, 2),
            _bhsd(batch, kv_heads, seq_kv, dim_v, dtype, 3))


def _close(actual, expected, dtype):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])


def _bool_mask(shape, seed=4):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < 0.6
    mask[..., 0] = True  # every row keeps a key: PyTorch gives NaN for empty rows
    return mask


def _float_mask(shape, dtype=torch.float32, seed=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.randn(shape, generator=g)
    mask[torch.rand(shape, generator=g) < 0.3] = float("-inf")
    mask[..., 0] = 0.0
    return mask.to(dtype)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_q,seq_kv", [(9, 13), (13, 9), (1, 20), (16, 16)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_torch(dtype, seq_q, seq_kv, is_causal):
    q, k, v = _inputs(seq_q=seq_q, seq_kv=seq_kv, dtype=dtype)
    with torch.no_grad():
        _close(sdpa(q, k, v, is_causal=is_causal), F.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
               dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 13), (2, 1, 9, 13), (1, 4, 9, 13), (2, 4, 9, 13), (2, 4, 1, 13), (1, 13)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_match_torch(dtype, shape, kind):
    q, k, v = _inputs(dtype=dtype)
    mask = _bool_mask(shape) if kind == "bool" else _float_mask(shape, dtype)
    with torch.no_grad():
        _close(sdpa(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [1, 2, 8])
def test_gqa_matches_torch(dtype, kv_heads):
    q, k, v = _inputs(heads=8, kv_heads=kv_heads, dim_v=12, dtype=dtype)
    with torch.no_grad():
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        _close(sdpa(q, k, v, is_causal=True, enable_gqa=True), expected, dtype)


def test_scale_and_rank3_match_torch():
    q, k, v = _inputs()
    with torch.no_grad():
        _close(sdpa(q, k, v, scale=0.05), F.scaled_dot_product_attention(q, k, v, scale=0.05), torch.float32)
        _close(sdpa(q[0], k[0], v[0], is_causal=True),
               F.scaled_dot_product_attention(q[0], k[0], v[0], is_causal=True), torch.float32)


def test_strided_torch_inputs_match_torch():
    # [batch, seq, heads, dim] storage seen as [batch, heads, seq, dim], as models do.
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in _inputs())
    assert not q.is_contiguous()
    with torch.no_grad():
        _close(sdpa(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True),
               torch.float32)


def test_fully_masked_row_is_zero_where_torch_gives_nan():
    q, k, v = _inputs()
    mask = _bool_mask((9, 13))
    mask[3] = False
    with torch.no_grad():
        out = sdpa(q, k, v, attn_mask=mask)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.all(out[:, :, 3] == 0)
    keep = torch.ones(9, dtype=torch.bool)
    keep[3] = False
    _close(out[:, :, keep], expected[:, :, keep], torch.float32)


def test_inference_mode_and_grad_free_tensors():
    q, k, v = _inputs()
    with torch.inference_mode():
        out = sdpa(q, k, v)
    _close(out, F.scaled_dot_product_attention(q, k, v), torch.float32)
    out = sdpa(q, k, v)  # no tensor requires grad: grad mode does not matter
    assert not out.requires_grad


class _Decoder(torch.nn.Module):
    """A small pre-norm decoder (GQA attention, MLP) that calls
    torch.nn.functional.scaled_dot_product_attention the way models do: looked
    up at call time, so swapping the function swaps what the model runs."""

    def __init__(self, dim=128, heads=8, kv_heads=2, layers=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(dim) for _ in range(2 * layers))
        self.qkv = torch.nn.ModuleList(
            torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim) for _ in range(layers))
        self.out = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(layers))
        self.mlp = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                torch.nn.Linear(4 * dim, dim)) for _ in range(layers))

    def forward(self, x):
        batch, seq, _ = x.shape
        for i in range(len(self.qkv)):
            split = [self.heads * self.head_dim, self.kv_heads * self.head_dim,
                     self.kv_heads * self.head_dim]
            q, k, v = self.qkv[i](self.norms[2 * i](x)).split(split, dim=-1)
            q, k, v = (t.view(batch, seq, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.out[i](o.transpose(1, 2).reshape(batch, seq, -1))
            x = x + self.mlp[i](self.norms[2 * i + 1](x))
        return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swapped_into_a_model_gives_torchs_numbers(dtype, monkeypatch):
    torch.manual_seed(0)
    model = _Decoder().to(dtype).eval()
    x = torch.randn(2, 37, 128).to(dtype)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    with torch.inference_mode():
        expected = model(x)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        actual = model(x)
    assert len(calls) == 2, "the model did not run qkv"
    # Two layers' worth of each side's roundings: float32 differs by summation
    # order only; bfloat16 by one rounding of o per layer, carried through the
    # layers after it.
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


# --- qkv.attention on tensors ------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_on_tensors(dtype):
    q, k, v = (x.transpose(1, 2) for x in _inputs(heads=8, kv_heads=2, dtype=dtype))  # [B, S, H, D] views
    slopes = torch.linspace(0.1, 1.0, 8)
    out, lse = qkv.attention(q, k, v, causal=True, window=(5, 0), alibi_slopes=slopes, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and lse.dtype == torch.float32
    as64 = [x.float().numpy() for x in (q, k, v)]
    ref_o, _ = attention_reference(*as64, causal=True, window=(5, 0), alibi_slopes=slopes.numpy())
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert_close(out.float().numpy(), ref_o, name, float(np.abs(as64[2]).max()))


def test_attention_on_tensors_equals_numpy():
    q, k, v = (x.transpose(1, 2) for x in _inputs())
    mask = _bool_mask((2, 1, 9, 13))
    out = qkv.attention(q, k, v, mask=mask, sinks=torch.zeros(4))
    expected = qkv.attention(*(x.numpy() for x in (q, k, v)), mask=mask.numpy(), sinks=np.zeros(4))
    np.testing.assert_array_equal(out.numpy(), expected)


# --- zero copy -----------------------------------------------------------------


def test_binding_sees_the_tensors_memory():
    for dtype in DTYPES:
        x = _bhsd(2, 4, 9, 16, dtype)
        view = x.transpose(1, 2)  # what the drop-in hands qkv
        address, shape, strides = _qkv.view_info(view)
        assert address == x.data_ptr()
        assert shape == tuple(view.shape) and strides == view.stride()
    mask = torch.ones(1, 1, 1, 13, dtype=torch.bool).expand(2, 4, 9, 13)
    assert _qkv.view_info(mask)[0] == mask.data_ptr() and _qkv.view_info(mask)[2] == (0, 0, 0, 1)


def test_requires_grad_tensor_is_read_in_place_under_no_grad():
    q, k, v = _inputs()
    q.requires_grad_(True)
    with torch.no_grad():
        out = sdpa(q, k, v)
        assert _qkv.view_info(q.detach().transpose(1, 2))[0] == q.data_ptr()
    _close(out, F.scaled_dot_product_attention(q.detach(), k, v), torch.float32)


# --- errors --------------------------------------------------------------------


def test_dropout_is_not_implemented():
    q, k, v = _inputs()
    with pytest.raises(NotImplementedError, match="dropout_p must be 0"):
        sdpa(q, k, v, dropout_p=0.1)


def test_a_mask_that_requires_grad_is_refused():
    # qkv computes gradients for query, key, value and sinks only
    # (tests/python/test_backward.py); a mask's would be silently missing.
    q, k, v = _inputs()
    mask = _float_mask((9, 13)).requires_grad_(True)
    with pytest.raises(NotImplementedError, match="attn_mask require grad.*gradients for"):
        sdpa(q, k, v, attn_mask=mask)
    with pytest.raises(NotImplementedError, match="mask require grad"):
        qkv.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask)
    with torch.no_grad():
        sdpa(q, k, v, attn_mask=mask)  # no graph to record: fine


def test_causal_with_mask_is_an_error():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="attn_mask must be None when is_causal"):
        sdpa(q, k, v, attn_mask=_bool_mask((9, 13)), is_causal=True)


def test_heads_differ_without_gqa():
    q, k, v = _inputs(heads=8, kv_heads=2)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        sdpa(q, k, v)
    q, k, v = _inputs(heads=8, kv_heads=3)
    with pytest.raises(ValueError, match=r"kv_heads \(3\) must divide heads \(8\)"):
        sdpa(q, k, v, enable_gqa=True)


def test_meta_device_is_rejected():
    q, k, v = (x.to("meta") for x in _inputs())
    with pytest.raises(ValueError, match="query must be on the CPU"):
        sdpa(q, k, v)
    with pytest.raises(ValueError, match="q must be on the CPU"):
        qkv.attention(q, k, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_is_rejected():
    q, k, v = (x.cuda() for x in _inputs())
    with pytest.raises(ValueError, match="must be on the CPU"):
        sdpa(q, k, v)


def test_bad_dtypes():
    q, k, v = _inputs()
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, not float64"):
        sdpa(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match=r"k dtype \(bfloat16\) must match q dtype \(float32\)"):
        sdpa(q, k.bfloat16(), v)
    with pytest.raises(TypeError, match="mask must be bool or float32, not int64"):
        sdpa(q, k, v, attn_mask=torch.ones(9, 13, dtype=torch.int64))


def test_bad_ranks_and_shapes():
    q, k, v = _inputs()
    with pytest.raises(NotImplementedError, match="rank 3 or 4"):
        sdpa(q[None], k[None], v[None])
    with pytest.raises(ValueError, match="does not broadcast"):
        sdpa(q, k, v, attn_mask=torch.ones(9, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="must have a contiguous innermost dimension"):
        sdpa(q.transpose(2, 3).contiguous().transpose(2, 3)[..., :9, :], k, v)


def _expect_exact_probs_closer(fast, precise, exact):
    """fast and precise: the same bfloat16 call without and with exact_bf16_probs;
    exact: the float64 result. On AMX or AVX512-BF16 the default rounds the
    probabilities to bfloat16 (as PyTorch) and the flag carries them further (two
    terms on tiles, float32 elsewhere), so precise must be closer; on other CPUs P
    stays float32 and both give the same bits."""
    if torch.equal(fast, precise):
        assert not _cpu_has_bf16_units(), "exact_bf16_probs changed nothing on a CPU with bf16 units"
        return
    err_fast = np.abs(fast.double().numpy() - exact).mean()
    err_precise = np.abs(precise.double().numpy() - exact).mean()
    assert err_precise < 0.8 * err_fast, (err_precise, err_fast)


def _cpu_has_bf16_units():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and (" amx_bf16" in line or " avx512_bf16" in line)
                       for line in f)
    except OSError:
        return False


def test_exact_bf16_probs_is_never_further_from_the_exact_result():
    q, k, v = _inputs(batch=1, heads=4, kv_heads=2, seq_q=200, seq_kv=300, dim=64, dim_v=64,
                      dtype=torch.bfloat16)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, S, H, D] views
    exact = attention_reference(*(x.double().numpy() for x in (q, k, v)))[0]
    # measured on AMX: mean error 1.09e-4 with the flag, 1.60e-4 without
    _expect_exact_probs_closer(qkv.attention(q, k, v),
                               qkv.attention(q, k, v, exact_bf16_probs=True), exact)


def test_exact_bf16_probs_reaches_the_cache_prefill():
    # bfloat16 queries over a bfloat16 cache, 32 rows per kv head (the flash
    # kernel, AMX where present): the flag passes through attention_with_kvcache.
    g = torch.Generator().manual_seed(5)
    k, v = (torch.randn(1, 300, 1, 64, generator=g).bfloat16() for _ in range(2))
    q = torch.randn(1, 8, 4, 64, generator=g).bfloat16()
    cache = qkv.KVCache(1, 320, 1, 64, 64, dtype="bfloat16")
    qkv.attention_with_kvcache(q[:, :0], cache, k, v)  # fills the cache, no queries
    exact = attention_reference(*(x.double().numpy() for x in (q, k, v)), causal=True)[0]
    _expect_exact_probs_closer(qkv.attention_with_kvcache(q, cache, causal=True),
                               qkv.attention_with_kvcache(q, cache, causal=True,
                                                          exact_bf16_probs=True), exact)
