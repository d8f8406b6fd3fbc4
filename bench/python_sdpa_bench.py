#!/usr/bin/env python3
"""qkv from Python against PyTorch's CPU attention, same shapes and threads, one run.

    python bench/python_sdpa_bench.py                 # all cores, float32 and bfloat16
    python bench/python_sdpa_bench.py --threads 1 --dtype float32 --quick
    python bench/python_sdpa_bench.py --train         # forward + backward (autograd)

Columns (median milliseconds of --repeat timed calls; the three implementations take
turns in blocks of BLOCK calls, the first call of each block untimed, so a change of
machine load hits them alike and neither is timed right after the other):
    torch      torch.nn.functional.scaled_dot_product_attention, [B, H, S, D] tensors
    qkv.torch  qkv.torch.scaled_dot_product_attention on the same tensors (drop-in)
    qkv        qkv.attention on [B, S, H, D] views of them (no copies, output [B, S, H, D])
    GFLOP/s    of qkv.torch: 4 * head_dim flops per visible (query, key) pair and head
    speed-up   torch / qkv.torch
With --train each call is a training step's share: out = sdpa(q, k, v), then
out.backward(dout) (q, k, v requiring grad; torch's SDPA backward against qkv's,
qkv::attention_backward); GFLOP/s count 4 + 10 = 14 * head_dim flops per visible
pair and head (the forward's two products and the backward's five); the qkv column
is left out and the decode case skipped.
Both libraries get the same thread count (torch.set_num_threads; qkv.torch follows it).
Needs torch (pip install torch, or make test-peers).

Why blocks: each library runs its own OpenMP pool (PyTorch bundles a libgomp, qkv uses
the system's), and libgomp's workers spin for a while after a parallel region before
they sleep (GOMP_SPINCOUNT, default 300000 spins: milliseconds). A call that starts
right after the other library's therefore shares the cores with its spinning workers:
on 2 cores both libraries ran about 25% slower that way. --mixed times exactly those
calls (the cost of alternating libraries in a model; GOMP_SPINCOUNT=10000 in the
environment, set before Python starts, removes most of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

try:
    import torch
except ImportError:
    raise SystemExit("python_sdpa_bench.py needs torch: pip install torch (or make test-peers)")

import qkv
import qkv.torch

F = torch.nn.functional

# (name, batch, heads, kv_heads, seq_q, seq_kv, head_dim, is_causal)
CASES = [
    ("prefill-d64", 1, 8, 8, 1024, 1024, 64, True),
    ("prefill-d128-gqa", 1, 16, 4, 1024, 1024, 128, True),
    ("prefill-d128-full", 1, 8, 8, 1024, 1024, 128, False),
    ("prefill-d128-2k", 1, 8, 2, 2048, 2048, 128, True),
    ("chunk-d128", 1, 16, 4, 128, 2048, 128, False),
    ("decode-d128", 4, 32, 8, 1, 4096, 128, False),
]
QUICK = {"prefill-d64", "prefill-d128-gqa", "decode-d128"}


def visible_pairs(seq_q: int, seq_kv: int, causal: bool) -> int:
    """(query, key) pairs that take part; top-left causal: query i sees keys 0..i."""
    if not causal:
        return seq_q * seq_kv
    return sum(min(i + 1, seq_kv) for i in range(seq_q))


BLOCK = 4  # calls per turn: one untimed, then BLOCK - 1 timed


def median_ms(fns, repeat: int, mixed: bool = False):
    """Median milliseconds of each of `fns`, timed in turns so a machine whose
    load changes during the run slows all of them alike: blocks of BLOCK calls
    whose first call (right after another function's) is untimed, or, mixed,
    single calls, each right after another function's."""
    for fn in fns:
        fn()  # warm-up: thread pools, packing buffers, caches
    times = [[] for _ in fns]
    while len(times[0]) < repeat:
        for fn, t in zip(fns, times):
            if not mixed:
                fn()
            for _ in range(1 if mixed else BLOCK - 1):
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per cell (median)")
    parser.add_argument("--quick", action="store_true", help="three small cases only")
    parser.add_argument("--train", action="store_true", help="forward + backward under autograd")
    parser.add_argument("--mixed", action="store_true",
                        help="time single calls in turns, each right after the other library's")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    print(f"torch {torch.__version__}, qkv {qkv.__version__}, {args.threads} threads, "
          f"median of {args.repeat} calls, " +
          ("each right after another implementation's" if args.mixed else
           f"in blocks of {BLOCK} (the first untimed)"))
    header = f"{'case':<20} {'dtype':<9} {'torch ms':>9} {'qkv.torch ms':>13} {'qkv ms':>8} {'GFLOP/s':>8} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, batch, heads, kv_heads, seq_q, seq_kv, head_dim, causal in CASES:
        if args.quick and name not in QUICK:
            continue
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            g = torch.Generator().manual_seed(0)
            q = torch.randn(batch, heads, seq_q, head_dim, generator=g).to(dtype)
            k = torch.randn(batch, kv_heads, seq_kv, head_dim, generator=g).to(dtype)
            v = torch.randn(batch, kv_heads, seq_kv, head_dim, generator=g).to(dtype)
            gqa = heads != kv_heads
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            if args.train:
                if seq_q == 1:
                    continue
                train(name, dtype_name, q, k, v, causal, gqa, args)
                continue
            with torch.inference_mode():
                t_torch, t_drop_in, t_qkv = median_ms([
                    lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa),
                    lambda: qkv.torch.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa),
                    lambda: qkv.attention(qt, kt, vt, causal=causal, causal_align="top-left",
                                          num_threads=args.threads),
                ], args.repeat, args.mixed)
            flops = 4.0 * batch * heads * head_dim * visible_pairs(seq_q, seq_kv, causal)
            print(f"{name:<20} {dtype_name:<9} {t_torch:9.2f} {t_drop_in:13.2f} {t_qkv:8.2f} "
                  f"{flops / t_drop_in / 1e6:8.1f} {t_torch / t_drop_in:8.2f}x")


def train(name, dtype_name, q, k, v, causal, gqa, args) -> None:
    """One row of --train: forward + backward of torch's SDPA and qkv.torch's."""
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    dout = torch.randn(q.shape[0], q.shape[1], q.shape[2], v.shape[3],
                       generator=torch.Generator().manual_seed(1)).to(q.dtype)

    def step(sdpa):
        def run():
            for x in leaves:
                x.grad = None
            sdpa(*leaves, is_causal=causal, enable_gqa=gqa).backward(dout)
        return run

    t_torch, t_drop_in = median_ms(
        [step(F.scaled_dot_product_attention), step(qkv.torch.scaled_dot_product_attention)],
        args.repeat, args.mixed)
    flops = 14.0 * q.shape[0] * q.shape[1] * q.shape[3] * visible_pairs(q.shape[2], k.shape[2], causal)
    print(f"{name:<20} {dtype_name:<9} {t_torch:9.2f} {t_drop_in:13.2f} {'-':>8} "
          f"{flops / t_drop_in / 1e6:8.1f} {t_torch / t_drop_in:8.2f}x")


if __name__ == "__main__":
    main()
