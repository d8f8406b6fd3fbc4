#!/usr/bin/env python3
"""Draws the figure of a `qkv bench --json` file: GFLOP/s against seq.

    python3 bench/plot.py docs/bench.json --out docs/bench.png

One subplot per (head_dim, query heads / KV heads, causal) of the chosen dtype
(float32 by default), one line per implementation, and a dashed line at the
machine's measured fp32 FMA peak. `qkv bench --plot` runs this script.

Exit status: 0 drawn, 2 bad input, 3 matplotlib (or numpy) is not installed.
"""

import argparse
import json
import sys

MISSING_MODULE = 3

STYLE = {  # implementation -> (colour, marker)
    "qkv": ("tab:blue", "o"),
    "openblas": ("tab:gray", "s"),
    "torch": ("tab:orange", "^"),
    "onnxruntime": ("tab:green", "v"),
}


def main(argv):
    parser = argparse.ArgumentParser(description="Plot GFLOP/s against seq from a qkv bench --json file.")
    parser.add_argument("json", help="the file `qkv bench --json` wrote")
    parser.add_argument("--out", "-o", required=True, help="PNG file to write")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="cases to plot (default fp32)")
    args = parser.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot.py: matplotlib is not installed ({e}); pip install matplotlib", file=sys.stderr)
        return MISSING_MODULE

    try:
        with open(args.json) as f:
            report = json.load(f)
        cases = [c for c in report["cases"] if c["dtype"] == args.dtype]
        implementations = report["implementations"]
        peak = report["peak_gflops"]["peak"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"plot.py: cannot read {args.json}: {e}", file=sys.stderr)
        return 2
    if not cases:
        print(f"plot.py: {args.json} has no {args.dtype} case", file=sys.stderr)
        return 2

    groups = sorted({(c["head_dim"], c["heads"], c["kv_heads"], c["causal"]) for c in cases},
                    key=lambda g: (g[0], g[1], g[2], not g[3]))
    columns = min(len(groups), 4)
    rows = (len(groups) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)

    for ax, (head_dim, heads, kv_heads, causal) in zip(axes.flat, groups):
        group = sorted((c for c in cases if (c["head_dim"], c["heads"], c["kv_heads"], c["causal"]) ==
                        (head_dim, heads, kv_heads, causal)), key=lambda c: c["seq"])
        for impl in implementations:
            points = [(c["seq"], c["results"][impl]["gflops"]) for c in group
                      if "gflops" in c["results"].get(impl, {})]
            if not points:
                continue
            colour, marker = STYLE.get(impl, (None, "x"))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=colour, label=impl,
                    linewidth=2 if impl == "qkv" else 1.2)
        ax.axhline(peak, color="black", linestyle="--", linewidth=1, label=f"fp32 FMA peak ({peak:.0f})")
        ax.set_xscale("log", base=2)
        ax.set_xticks([c["seq"] for c in group])
        ax.set_xticklabels([f"{c['seq'] // 1024}K" if c["seq"] >= 1024 else str(c["seq"]) for c in group])
        ax.set_ylim(bottom=0)
        ax.set_title(f"d{head_dim}, {heads}/{kv_heads} heads, {'causal' if causal else 'no mask'}", fontsize=10)
        ax.set_xlabel("seq")
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("GFLOP/s")
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="lower center", ncol=len(labels),
               frameon=False)
    machine = report.get("machine", {})
    fig.suptitle(f"qkv bench, {args.dtype}, batch 1: {machine.get('cpu', '?')}, "
                 f"{machine.get('threads', '?')} threads, {machine.get('simd_target', '?')}, "
                 f"{report.get('date', '')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
