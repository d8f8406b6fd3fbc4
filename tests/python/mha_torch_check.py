"""Writes a torch.nn.MultiheadAttention case file for the C++ parity test.

Not run by default (pytest collects only test_*.py; the C++ test skips
without a file). There is no Python binding for qkv::MultiHeadAttention, so
the comparison runs in C++: this script draws x and the weights, runs
torch.nn.MultiheadAttention (batch_first, causal mask, float32), and writes
inputs, weights (in qkv's layout) and torch's output; the GoogleTest
MultiHeadAttention.MatchesTorchOnACaseFile runs qkv's layer on the same file.

    pip install torch numpy
    python tests/python/mha_torch_check.py --out /tmp/mha_torch.bin
    QKV_MHA_TORCH_CASE=/tmp/mha_torch.bin \
        build/tests/qkv_tests --gtest_filter='MultiHeadAttention.MatchesTorch*'

Options: --batch --seq --embed --heads --no-bias --no-causal --seed.
--numpy writes the same file with y from a float64 NumPy transcription of
torch's documented formula instead (no torch needed; it checks the file
format and the weight-layout mapping, not torch itself).

Layout mapping (see include/qkv/mha.h):
    qkv_weight [embed, 3 * embed] = in_proj_weight.T   (columns: q | k | v)
    qkv_bias   [3 * embed]        = in_proj_bias
    out_weight [embed, embed]     = out_proj.weight.T
    out_bias   [embed]            = out_proj.bias

File: b"QKVMHA01", int64 batch, seq, embed, heads, bias, causal, then float32
little-endian arrays x, qkv_weight, [qkv_bias], out_weight, [out_bias], y.
"""

import argparse
import struct

import numpy as np


def numpy_mha(x, in_w, in_b, out_w, out_b, heads, causal):
    """torch.nn.MultiheadAttention(batch_first=True) in float64.

    x [batch, seq, embed]; in_w [3 * embed, embed]; out_w [embed, embed].
    """
    x = x.astype(np.float64)
    batch, seq, embed = x.shape
    d = embed // heads
    qkv = x @ in_w.T.astype(np.float64) + (0 if in_b is None else in_b)
    q, k, v = (t.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # [batch, heads, seq, seq]
    if causal:
        s = np.where(np.triu(np.ones((seq, seq), bool), 1), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(batch, seq, embed)
    return o @ out_w.T.astype(np.float64) + (0 if out_b is None else out_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=17)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--no-bias", action="store_true")
    ap.add_argument("--no-causal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--numpy", action="store_true", help="y from NumPy instead of torch")
    args = ap.parse_args()
    bias, causal = not args.no_bias, not args.no_causal
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, args.seq, args.embed)).astype(np.float32)

    if args.numpy:
        e = args.embed
        in_w = (rng.standard_normal((3 * e, e)) / np.sqrt(e)).astype(np.float32)
        out_w = (rng.standard_normal((e, e)) / np.sqrt(e)).astype(np.float32)
        in_b = rng.standard_normal(3 * e).astype(np.float32) * 0.5 if bias else None
        out_b = rng.standard_normal(e).astype(np.float32) * 0.5 if bias else None
        y = numpy_mha(x, in_w, in_b, out_w, out_b, args.heads, causal).astype(np.float32)
    else:
        import torch

        torch.manual_seed(args.seed)
        mha = torch.nn.MultiheadAttention(args.embed, args.heads, bias=bias, batch_first=True)
        if bias:  # torch initializes biases to 0: make them matter
            with torch.no_grad():
                mha.in_proj_bias.normal_(0, 0.5)
                mha.out_proj.bias.normal_(0, 0.5)
        xt = torch.from_numpy(x)
        mask = None
        if causal:
            mask = torch.triu(torch.ones(args.seq, args.seq, dtype=torch.bool), 1)  # True = masked
        with torch.no_grad():
            y = mha(xt, xt, xt, attn_mask=mask, need_weights=False)[0].numpy()
        in_w = mha.in_proj_weight.detach().numpy()
        out_w = mha.out_proj.weight.detach().numpy()
        in_b = mha.in_proj_bias.detach().numpy() if bias else None
        out_b = mha.out_proj.bias.detach().numpy() if bias else None

    with open(args.out, "wb") as f:
        f.write(b"QKVMHA01")
        f.write(struct.pack("<6q", args.batch, args.seq, args.embed, args.heads, int(bias), int(causal)))
        arrays = [x, in_w.T, in_b, out_w.T, out_b, y]
        for a in arrays:
            if a is not None:
                f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    print(f"wrote {args.out}: batch {args.batch} seq {args.seq} embed {args.embed} heads {args.heads} "
          f"bias {bias} causal {causal} max|y| {np.abs(y).max():.3g}")


if __name__ == "__main__":
    main()
