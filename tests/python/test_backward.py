"""Gradients: qkv.attention and qkv.torch.scaled_dot_product_attention under
autograd, and qkv.attention_backward on NumPy arrays, against the gradients
autograd takes of a float64 PyTorch attention written from the semantics
table (every option), and against PyTorch's own SDPA backward. Skipped when
torch is not installed (make test-peers installs it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import qkv  # noqa: E402
import qkv.torch  # noqa: E402


def reference(q, k, v, *, causal=False, causal_align="bottom-right", window=(-1, -1), scale=None,
              softcap=0.0, alibi_slopes=None, sinks=None, mask=None):
    """Attention in float64 torch ops (so autograd gives the exact gradients);
    qkv's layout: q [b, sq, h, d], k [b, skv, hk, d], v [b, skv, hk, dv]."""
    b, sq, h, d = q.shape
    skv, hk = k.shape[1], k.shape[2]
    kk, vv = k.repeat_interleave(h // hk, 2), v.repeat_interleave(h // hk, 2)
    scale = 1 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq)[:, None]
    j = torch.arange(skv)[None, :]
    diag = skv - sq
    if alibi_slopes is not None:
        slopes = alibi_slopes.double().reshape(-1 if alibi_slopes.dim() == 2 else 1, h)
        s = s - slopes[:, :, None, None] * (i + diag - j).abs()
    visible = torch.ones(sq, skv, dtype=torch.bool).expand(b, h, sq, skv)
    if causal:
        visible = visible & (j <= (i + diag if causal_align == "bottom-right" else i))
    if window[0] >= 0:
        visible = visible & (j >= i + diag - window[0])
    if window[1] >= 0:
        visible = visible & (j <= i + diag + window[1])
    if mask is not None and mask.dtype == torch.bool:
        visible = visible & mask
    elif mask is not None:
        s = s + mask.double()
    s = s.masked_fill(~visible, float("-inf"))
    seen = visible.any(-1, keepdim=True)
    s = s.masked_fill(~seen, 0.0)  # empty rows: no NaN through the softmax
    if sinks is not None:
        sink = sinks.double().reshape(1, h, 1, 1).expand(b, h, sq, 1)
        p = torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]
    else:
        p = torch.softmax(s, -1)
    p = p * seen
    return torch.einsum("bhij,bjhd->bihd", p, vv)


def _inputs(batch=2, seq_q=23, seq_kv=31, heads=4, kv_heads=2, dim=16, dim_v=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_q, heads, dim, generator=g)
    k = torch.randn(batch, seq_kv, kv_heads, dim, generator=g)
    v = torch.randn(batch, seq_kv, kv_heads, dim_v, generator=g)
    dout = torch.randn(batch, seq_q, heads, dim_v, generator=g)
    return q, k, v, dout


def _grads(fn, tensors, dout):
    """The output of fn(*tensors) and the gradients of sum(out * dout)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(dout.to(out.dtype))
    return out, [t.grad for t in leaves]


def _assert_close(actual, expected, tolerance, name):
    scale = max(expected.abs().max().item(), 1e-3)
    error = (actual.double() - expected).abs().max().item()
    assert error <= tolerance * scale, f"{name}: error {error:.3g} over {tolerance:.1g} x {scale:.3g}"


OPTIONS = [
    {},
    {"causal": True},
    {"causal": True, "causal_align": "top-left"},
    {"window": (5, 2)},
    {"softcap": 2.0},
    {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])},
    {"scale": 0.3, "softcap": 5.0, "causal": True},
    {"mask": "bool"},
    {"mask": "float"},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_autograd_matches_the_float64_reference(options):
    q, k, v, dout = _inputs()
    options = dict(options)
    if options.get("mask") == "bool":
        g = torch.Generator().manual_seed(7)
        options["mask"] = torch.rand(23, 31, generator=g) < 0.6
    elif options.get("mask") == "float":
        g = torch.Generator().manual_seed(8)
        options["mask"] = torch.randn(2, 1, 23, 31, generator=g)
    ref_out, ref = _grads(lambda a, b, c: reference(a, b, c, **options), [q.double(), k.double(), v.double()], dout.double())
    out, got = _grads(lambda a, b, c: qkv.attention(a, b, c, **options), [q, k, v], dout)
    _assert_close(out, ref_out, 1e-5, "out")
    for name, a, b in zip(("dq", "dk", "dv"), got, ref):
        assert a.dtype == torch.float32 and a.shape == b.shape
        _assert_close(a, b, 1e-4, name)


def test_sinks_get_their_gradient():
    q, k, v, dout = _inputs(seq_q=40, seq_kv=20)  # seq_q > seq_kv: 20 rows see no key
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    ref_out, ref = _grads(lambda a, b, c, s: reference(a, b, c, sinks=s, causal=True),
                          [q.double(), k.double(), v.double(), sinks.double()], dout.double())
    out, got = _grads(lambda a, b, c, s: qkv.attention(a, b, c, sinks=s, causal=True), [q, k, v, sinks], dout)
    _assert_close(out, ref_out, 1e-5, "out")
    for name, a, b in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        _assert_close(a, b, 1e-4, name)
        assert torch.isfinite(a).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 8 * 2**-11), (torch.bfloat16, 8 * 2**-8)])
def test_half_storage(dtype, tolerance):
    q, k, v, dout = (x.to(dtype) for x in _inputs(dim=64, dim_v=64))
    ref_out, ref = _grads(lambda a, b, c: reference(a, b, c, causal=True), [q.double(), k.double(), v.double()], dout.double())
    out, got = _grads(lambda a, b, c: qkv.attention(a, b, c, causal=True), [q, k, v], dout)
    for name, a, b in zip(("dq", "dk", "dv"), got, ref):
        assert a.dtype == dtype
        _assert_close(a, b, tolerance, name)


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"attn_mask": "bool"}, {"attn_mask": "float"},
                                    {"scale": 0.2, "enable_gqa": True}])
def test_sdpa_drop_in_matches_pytorch_backward(kwargs):
    g = torch.Generator().manual_seed(3)
    heads_kv = 2 if kwargs.get("enable_gqa") else 4
    q = torch.randn(2, 4, 33, 16, generator=g)
    k = torch.randn(2, heads_kv, 33, 16, generator=g)
    v = torch.randn(2, heads_kv, 33, 16, generator=g)
    kwargs = dict(kwargs)
    if kwargs.get("attn_mask") == "bool":
        kwargs["attn_mask"] = torch.rand(33, 33, generator=g) < 0.7
        kwargs["attn_mask"][:, 0] = True  # PyTorch gives NaN for rows with no key
    elif kwargs.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(2, 4, 33, 33, generator=g)  # one per head
    dout = torch.randn(2, 4, 33, 16, generator=g)
    ref_kwargs = dict(kwargs)
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        ref_kwargs["attn_mask"] = kwargs["attn_mask"].double()  # (PyTorch wants q's dtype)
    ref_out, ref = _grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **ref_kwargs),
                          [q.double(), k.double(), v.double()], dout.double())
    out, got = _grads(lambda a, b, c: qkv.torch.scaled_dot_product_attention(a, b, c, **kwargs), [q, k, v], dout)
    for name, a, b in zip(("dquery", "dkey", "dvalue"), got, ref):
        assert a.shape == b.shape
        _assert_close(a, b, 1e-4, name)


def test_a_gradient_with_zero_strides_and_return_lse():
    # out.sum().backward() hands the backward an expanded (stride-0) gradient.
    q, k, v, _ = _inputs()
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = qkv.attention(*leaves, causal=True, return_lse=True)
    assert not lse.requires_grad
    out.sum().backward()
    _, ref = _grads(lambda a, b, c: reference(a, b, c, causal=True), [q.double(), k.double(), v.double()],
                    torch.ones(out.shape, dtype=torch.float64))
    for name, a, b in zip(("dq", "dk", "dv"), (x.grad for x in leaves), ref):
        _assert_close(a, b, 1e-4, name)


def test_numpy_attention_backward_matches_autograd():
    q, k, v, dout = _inputs()
    sinks = np.array([0.1, 0.2, -0.3, 1.0], np.float32)
    opts = dict(causal=True, window=(9, -1), softcap=3.0)
    out, lse = qkv.attention(q.numpy(), k.numpy(), v.numpy(), sinks=sinks, return_lse=True, **opts)
    dq, dk, dv, dsinks = qkv.attention_backward(q.numpy(), k.numpy(), v.numpy(), out, lse, dout.numpy(),
                                                sinks=sinks, **opts)
    assert isinstance(dq, np.ndarray) and dq.dtype == np.float32 and dsinks.shape == (4,)
    _, ref = _grads(lambda a, b, c, s: reference(a, b, c, sinks=s, **opts),
                    [q.double(), k.double(), v.double(), torch.from_numpy(sinks).double()], dout.double())
    for name, a, b in zip(("dq", "dk", "dv", "dsinks"), (dq, dk, dv, dsinks), ref):
        _assert_close(torch.from_numpy(a), b, 1e-4, name)


def test_attention_backward_errors_name_the_argument():
    q, k, v, dout = (x.numpy() for x in _inputs())
    out, lse = qkv.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dout has shape"):
        qkv.attention_backward(q, k, v, out, lse, dout[:, :5])
    with pytest.raises(TypeError, match="dout must be float32"):
        qkv.attention_backward(q, k, v, out, lse, dout.astype(np.float16))
    with pytest.raises(ValueError, match="lse has shape"):
        qkv.attention_backward(q, k, v, out, lse[:, :1], dout)


def test_a_training_step_lowers_the_loss():
    # A smoke test of the whole path: a few steps of gradient descent on q, k, v.
    q, k, v, _ = _inputs()
    target = torch.randn(2, 23, 4, 12, generator=torch.Generator().manual_seed(9))
    params = [x.clone().requires_grad_(True) for x in (q, k, v)]
    opt = torch.optim.SGD(params, lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((qkv.attention(*params, causal=True) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
