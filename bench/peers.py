#!/usr/bin/env python3
"""Times other attention implementations on the cases of `qkv bench`.

`qkv bench` runs this script as a server (--serve) for the whole run and asks
it for each case right after timing qkv on that case, so that both sides of a
speed-up see the same machine state. It also runs on its own, on a list of
cases, printing one JSON document; progress goes to standard error:

    python3 bench/peers.py --cases cases.json --threads 2
    echo '[{"name": "d128-h32/8-s1024-causal-fp32", "seq_q": 1024, "seq_kv": 1024,
            "heads": 32, "kv_heads": 8, "head_dim": 128, "causal": true,
            "dtype": "fp32"}]' | python3 bench/peers.py --threads 2

A case (missing fields take these defaults):
    {"name": str, "batch": 1, "seq_q": int, "seq_kv": int, "heads": int,
     "kv_heads": heads, "head_dim": int, "causal": false, "dtype": "fp32"|"bf16"}
Causal masks are top-left in PyTorch and bottom-right in qkv; they agree
because the sweep has seq_q == seq_kv. Peers whose causal mask would differ
(seq_q != seq_kv) report the case as unavailable rather than time other work.

Output (list mode):
    {"python": "3.11.7",
     "peers": {"torch": {"version": "2.5.1", "notes": [...]} | {"unavailable": why}, ...},
     "results": [{"case": name, "impl": peer, "seconds": median, "times": [...],
                  "note": str?} | {"case": name, "impl": peer, "unavailable": why}]}

Serve mode (--serve), one JSON document per line both ways:
    first line out: {"python": ..., "peers": {...}}        (as above, once the
                                                            peers are imported)
    each line in:   {"peer": "torch", "case": {a case}}
    its line out:   one "results" row of that case and peer, written after
                    IDLE_SECONDS without work, so that the peer's worker
                    threads have stopped spinning when the caller times again.
    end of input:   exit 0.
Anything a library prints goes to standard error, never into the protocol.

Peers:
  torch        torch.nn.functional.scaled_dot_product_attention on [B, H, S, D]
               tensors (float32 or bfloat16), torch.set_num_threads(threads);
               GQA through enable_gqa=True where the installed torch has it,
               else K/V repeated to every query head before timing (noted).
  onnxruntime  a one-node ONNX graph on the CPU execution provider,
               intra_op_num_threads=threads, float32 only:
                 causal     com.microsoft GroupQueryAttention (always causal,
                            any kv_heads dividing heads);
                 not causal com.microsoft MultiHeadAttention (no GQA: K/V
                            repeated to every query head before timing, noted);
                 fallback   ONNX Attention (opset 23), which takes GQA as is
                            but materializes the score matrix.
               Each operator is first checked against a NumPy reference on a
               small problem; one that fails is not used.

Timing, as in qkv bench: one untimed warm-up call, then timed calls until
0.3 s have been spent in them (at least 3, at most 15) and their median, or a
single call when seq_q > 8192. Inputs are uniform in [-1, 1) (NumPy,
seeded): not qkv's numbers, but the same distribution and shapes.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

MIN_RUNS = 3
MAX_RUNS = 15
RUN_SECONDS = 0.3
SINGLE_RUN_ABOVE_SEQ = 8192
# A peer that materializes the [batch, heads, seq_q, seq_kv] float32 score
# matrix runs only if it takes at most this fraction of MemAvailable.
MEMORY_FRACTION = 0.6
# Serve mode: idle time between a peer's last call and the reply (thread pools
# spin for a while after a call before they sleep).
IDLE_SECONDS = 0.25
KNOWN_PEERS = ("torch", "onnxruntime")


# ---------------------------------------------------------------- helpers

class Progress:
    """One line on stderr, redrawn on a terminal, appended to in a log."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.open = False

    def start(self, text):
        if self.tty:
            sys.stderr.write("\r\033[K")
        elif self.open:
            sys.stderr.write("\n")
        sys.stderr.write(text)
        sys.stderr.flush()
        self.open = True

    def append(self, text):
        sys.stderr.write(text)
        sys.stderr.flush()
        self.open = True

    def finish(self):
        if self.open:
            sys.stderr.write("\r\033[K" if self.tty else "\n")
            sys.stderr.flush()
            self.open = False


def time_call(fn, seq):
    """Seconds per call: warm-up, then the median of MIN_RUNS to MAX_RUNS calls
    (as many as fill RUN_SECONDS; one above SINGLE_RUN_ABOVE_SEQ)."""
    fn()
    single = seq > SINGLE_RUN_ABOVE_SEQ
    times = []
    while not times or (not single and len(times) < MAX_RUNS and
                        (len(times) < MIN_RUNS or sum(times) < RUN_SECONDS)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def mem_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def short_error(e):
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


def normalize_case(raw):
    case = dict(raw)
    case.setdefault("batch", 1)
    case.setdefault("kv_heads", case["heads"])
    case.setdefault("seq_kv", case["seq_q"])
    case.setdefault("causal", False)
    case.setdefault("dtype", "fp32")
    case.setdefault("name", "d{head_dim}-h{heads}/{kv_heads}-s{seq_q}".format(**case))
    if case["heads"] % case["kv_heads"] != 0:
        raise ValueError(f"case {case['name']}: kv_heads ({case['kv_heads']}) must divide heads ({case['heads']})")
    if case["dtype"] not in ("fp32", "bf16"):
        raise ValueError(f"case {case['name']}: dtype must be fp32 or bf16, not {case['dtype']!r}")
    return case


def random_inputs(np, case, seed=0):
    """q [B, Sq, Hq, D], k and v [B, Skv, Hkv, D] float32, uniform in [-1, 1)."""
    rng = np.random.default_rng(seed)
    b, sq, skv = case["batch"], case["seq_q"], case["seq_kv"]
    hq, hkv, d = case["heads"], case["kv_heads"], case["head_dim"]
    q = rng.random((b, sq, hq, d), dtype=np.float32) * 2 - 1
    k = rng.random((b, skv, hkv, d), dtype=np.float32) * 2 - 1
    v = rng.random((b, skv, hkv, d), dtype=np.float32) * 2 - 1
    return q, k, v


def reference_attention(np, q, k, v, causal):
    """Textbook attention in float64 on [B, S, H, D] arrays; causal is top-left."""
    group = q.shape[2] // k.shape[2]
    k = np.repeat(k.astype(np.float64), group, axis=2)
    v = np.repeat(v.astype(np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k) / math.sqrt(q.shape[3])
    if causal:
        visible = np.tril(np.ones((q.shape[1], k.shape[1]), dtype=bool))
        s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bjhd->bihd", p, v)


# A small problem with a GQA group, odd sizes, every operator must pass.
CHECK_CASE = {"name": "check", "batch": 1, "seq_q": 67, "seq_kv": 67, "heads": 4, "kv_heads": 2,
              "head_dim": 32, "causal": False, "dtype": "fp32"}
CHECK_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


# ---------------------------------------------------------------- torch

class TorchPeer:
    name = "torch"

    def __init__(self, threads):
        import numpy as np
        import torch
        self.np, self.torch = np, torch
        self.threads = threads
        torch.set_num_threads(threads)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        self.sdpa = sdpa
        self.version = torch.__version__
        self.has_enable_gqa = True
        try:
            x = torch.zeros(1, 2, 4, 8)
            sdpa(x, x[:, :1], x[:, :1], enable_gqa=True)
        except TypeError:
            self.has_enable_gqa = False
        self.notes = [f"torch.set_num_threads({threads}); "
                      f"cpu capability {torch.backends.cpu.get_cpu_capability()}"
                      if hasattr(torch.backends, "cpu") else f"torch.set_num_threads({threads})"]
        if not self.has_enable_gqa:
            self.notes.append("no enable_gqa in this torch: K/V repeated to every query head before timing")
        self.checked = {}

    def _tensors(self, case, q, k, v):
        torch = self.torch
        dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32
        # [B, S, H, D] -> [B, H, S, D], contiguous, converted once outside the timed region.
        tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous().to(dtype) for x in (q, k, v))
        group = case["heads"] // case["kv_heads"]
        note = ""
        if group > 1 and not self.has_enable_gqa:
            tk = tk.repeat_interleave(group, dim=1)
            tv = tv.repeat_interleave(group, dim=1)
            note = "K/V repeated to every query head before timing (no enable_gqa)"
        return tq, tk, tv, note

    def _call(self, case, tq, tk, tv):
        kwargs = {"is_causal": bool(case["causal"])}
        if case["heads"] != case["kv_heads"] and self.has_enable_gqa:
            kwargs["enable_gqa"] = True
        torch, sdpa = self.torch, self.sdpa

        def call():
            with torch.inference_mode():
                return sdpa(tq, tk, tv, **kwargs)
        return call

    def check(self, dtype):
        """'' if sdpa matches the reference on a small problem in this dtype, else why not."""
        if dtype not in self.checked:
            np = self.np
            case = dict(CHECK_CASE, dtype=dtype)
            q, k, v = random_inputs(np, case, seed=1)
            why = ""
            for causal in (False, True):
                case["causal"] = causal
                tq, tk, tv, _ = self._tensors(case, q, k, v)
                out = self._call(case, tq, tk, tv)().float().transpose(1, 2).numpy()
                err = float(np.abs(out - reference_attention(np, q, k, v, causal)).max())
                if not err <= CHECK_TOLERANCE[dtype]:
                    why = f"differs from the reference by {err:.2e} (causal={causal})"
            self.checked[dtype] = why
        return self.checked[dtype]

    def run(self, case, inputs):
        if case["causal"] and case["seq_q"] != case["seq_kv"]:
            return {"unavailable": "is_causal is top-left; qkv's bottom-right differs when seq_q != seq_kv"}
        why = self.check(case["dtype"])
        if why:
            return {"unavailable": why}
        tq, tk, tv, note = self._tensors(case, *inputs)
        seconds, times = time_call(self._call(case, tq, tk, tv), case["seq_q"])
        result = {"seconds": seconds, "times": times}
        if note:
            result["note"] = note
        return result


# ---------------------------------------------------------------- onnxruntime

class OnnxRuntimePeer:
    name = "onnxruntime"

    def __init__(self, threads):
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
        self.np, self.onnx, self.ort, self.helper, self.TensorProto = np, onnx, ort, helper, TensorProto
        self.threads = threads
        self.version = ort.__version__
        self.notes = [f"intra_op_num_threads={threads}, CPUExecutionProvider, onnx {onnx.__version__}"]
        self.checked = {}  # operator -> '' or why it is not used

    # Each builder returns (model, feeds(q, k, v) -> dict, note, materializes).
    def _gqa(self, case):
        h, T = self.helper, self.TensorProto
        b, sq = case["batch"], case["seq_q"]
        node = h.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total_seq"],
                          ["o", "present_k", "present_v"], domain="com.microsoft",
                          num_heads=case["heads"], kv_num_heads=case["kv_heads"])
        inputs = [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("q", "k", "v")]
        inputs += [h.make_tensor_value_info("seqlens_k", T.INT32, [b]),
                   h.make_tensor_value_info("total_seq", T.INT32, [])]
        model = self._model(node, inputs, [("", 17), ("com.microsoft", 1)])
        np = self.np

        def feeds(q, k, v):
            return {"q": q.reshape(b, sq, -1), "k": k.reshape(b, k.shape[1], -1), "v": v.reshape(b, v.shape[1], -1),
                    "seqlens_k": np.full([b], case["seq_kv"] - 1, np.int32),
                    "total_seq": np.array(case["seq_kv"], np.int32)}
        return model, feeds, "", False

    def _mha(self, case):
        h, T = self.helper, self.TensorProto
        attrs = {"num_heads": case["heads"]}
        if case["causal"]:
            attrs["unidirectional"] = 1
        node = h.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", **attrs)
        inputs = [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("q", "k", "v")]
        model = self._model(node, inputs, [("", 17), ("com.microsoft", 1)])
        group = case["heads"] // case["kv_heads"]
        np = self.np
        b = case["batch"]

        def feeds(q, k, v):
            if group > 1:  # MultiHeadAttention has no GQA
                k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
            return {"q": q.reshape(b, q.shape[1], -1), "k": k.reshape(b, k.shape[1], -1),
                    "v": v.reshape(b, v.shape[1], -1)}
        note = "K/V repeated to every query head before timing (no GQA)" if group > 1 else ""
        return model, feeds, note, False

    def _attention23(self, case):
        h, T = self.helper, self.TensorProto
        node = h.make_node("Attention", ["q", "k", "v"], ["o"], is_causal=int(bool(case["causal"])))
        inputs = [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("q", "k", "v")]
        model = self._model(node, inputs, [("", 23)])
        np = self.np

        def feeds(q, k, v):  # [B, S, H, D] -> [B, H, S, D]
            return {n: np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for n, x in zip("qkv", (q, k, v))}
        return model, feeds, "", True

    def _model(self, node, inputs, opsets):
        h, T = self.helper, self.TensorProto
        graph = h.make_graph([node], "attention", inputs, [h.make_tensor_value_info("o", T.FLOAT, None)])
        return h.make_model(graph, opset_imports=[h.make_opsetid(d, v) for d, v in opsets])

    def _session(self, model):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return self.ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def _output_bshd(self, op, out, case):
        if op == "Attention":
            return out.transpose(0, 2, 1, 3)
        return out.reshape(case["batch"], case["seq_q"], case["heads"], case["head_dim"])

    BUILDERS = {"GroupQueryAttention": "_gqa", "MultiHeadAttention": "_mha", "Attention": "_attention23"}

    def _candidates(self, case):
        if case["causal"]:
            return ["GroupQueryAttention", "MultiHeadAttention", "Attention"]
        return ["MultiHeadAttention", "Attention"]

    def _check(self, op, causal):
        key = (op, causal)
        if key not in self.checked:
            np = self.np
            case = dict(CHECK_CASE, causal=causal)
            q, k, v = random_inputs(np, case, seed=1)
            try:
                model, feeds, _, _ = getattr(self, self.BUILDERS[op])(case)
                out = self._session(model).run(["o"], feeds(q, k, v))[0]
                err = float(np.abs(self._output_bshd(op, out, case) - reference_attention(np, q, k, v, causal)).max())
                self.checked[key] = "" if err <= CHECK_TOLERANCE["fp32"] else f"{op} differs from the reference by {err:.2e}"
            except Exception as e:  # an operator this onnxruntime lacks
                self.checked[key] = f"{op}: {short_error(e)}"
        return self.checked[key]

    def run(self, case, inputs):
        if case["dtype"] != "fp32":
            return {"unavailable": "float32 only (its CPU attention kernels)"}
        if case["causal"] and case["seq_q"] != case["seq_kv"]:
            return {"unavailable": "bench cases need seq_q == seq_kv for causal"}
        reasons = []
        for op in self._candidates(case):
            why = self._check(op, bool(case["causal"]))
            if why:
                reasons.append(why)
                continue
            model, feeds, note, materializes = getattr(self, self.BUILDERS[op])(case)
            if materializes:
                need = 4 * case["batch"] * case["heads"] * case["seq_q"] * case["seq_kv"]
                available = mem_available_bytes()
                if available is not None and need > MEMORY_FRACTION * available:
                    reasons.append(f"{op} needs {need / 2**30:.1f} GiB for its score matrix, "
                                   f"over {MEMORY_FRACTION:.0%} of MemAvailable ({available / 2**30:.1f} GiB)")
                    continue
            session = self._session(model)
            fed = feeds(*inputs)
            seconds, times = time_call(lambda: session.run(["o"], fed), case["seq_q"])
            del session, fed
            result = {"seconds": seconds, "times": times, "note": f"com.microsoft.{op}" if op != "Attention"
                      else "ONNX Attention (opset 23)"}
            if note:
                result["note"] += "; " + note
            return result
        return {"unavailable": "; ".join(reasons) or "no operator"}


PEER_CLASSES = {"torch": TorchPeer, "onnxruntime": OnnxRuntimePeer}


# ---------------------------------------------------------------- main

class Peers:
    """The peers asked for, imported once, and the inputs of the latest shape."""

    def __init__(self, names, threads, progress):
        self.report_header = {"python": platform.python_version(), "peers": {}}
        self.loaded = {}
        self.unavailable = {}
        try:
            import numpy as np
            self.np = np
        except ImportError as e:
            self.np = None
            numpy_missing = f"numpy is not installed ({short_error(e)})"
        for name in names:
            progress.start(f"peers.py: importing {name}...")
            try:
                if self.np is None:
                    raise ImportError(numpy_missing)
                peer = PEER_CLASSES[name](threads)
            except Exception as e:  # not installed, or broken: report, don't fail
                why = short_error(e)
                progress.append(" unavailable: " + why)
                self.unavailable[name] = why
                self.report_header["peers"][name] = {"unavailable": why}
                continue
            self.loaded[name] = peer
            self.report_header["peers"][name] = {"version": peer.version, "notes": peer.notes}
            progress.append(f" {peer.version}")
        self.shape, self.inputs = None, None

    def run(self, name, case):
        """One results row: peer `name` timed on `case`, or why it was not."""
        if name in self.unavailable:
            return {"case": case["name"], "impl": name, "unavailable": self.unavailable[name]}
        key = (case["batch"], case["seq_q"], case["seq_kv"], case["heads"], case["kv_heads"], case["head_dim"])
        if key != self.shape:
            self.shape, self.inputs = None, None  # free the previous inputs first
            self.inputs = random_inputs(self.np, case)
            self.shape = key
        try:
            result = self.loaded[name].run(case, self.inputs)
        except MemoryError:
            result = {"unavailable": "out of memory"}
        except Exception as e:  # one failing case does not end the run
            result = {"unavailable": short_error(e)}
        return {"case": case["name"], "impl": name, **result}

    def release_inputs(self):
        self.shape, self.inputs = None, None


def run_list(peers, names, cases, progress):
    """List mode: every case for each peer in turn; the whole report."""
    report = dict(peers.report_header, results=[])
    for name in names:
        for n, case in enumerate(cases):
            progress.start(f"[{n + 1}/{len(cases)}] {case['name']}: {name}...")
            row = peers.run(name, case)
            if "seconds" in row:
                progress.append(f" {row['seconds'] * 1e3:.1f} ms")
            else:
                progress.append(" unavailable: " + row["unavailable"])
            report["results"].append(row)
        peers.release_inputs()
    progress.finish()
    return report


def serve(peers, names, out):
    """Serve mode (see the module docstring): requests on stdin, rows on `out`."""
    def send(document):
        out.write(json.dumps(document) + "\n")
        out.flush()

    send(peers.report_header)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            name = request["peer"]
            case = normalize_case(request["case"])
        except (KeyError, TypeError, ValueError) as e:  # the caller's bug: say so, go on
            send({"case": "?", "impl": "?", "unavailable": f"bad request: {short_error(e)}"})
            continue
        if name not in names:
            send({"case": case["name"], "impl": str(name), "unavailable": f"peer not asked for (--peers {','.join(names)})"})
            continue
        row = peers.run(name, case)
        time.sleep(IDLE_SECONDS)
        send(row)
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time PyTorch and ONNX Runtime attention on qkv bench's cases; prints JSON results.",
        epilog="Input: a JSON list of cases (see the module docstring); output: JSON on stdout.")
    parser.add_argument("--cases", default="-", help="JSON file with the list of cases ('-' = stdin, the default)")
    parser.add_argument("--serve", action="store_true",
                        help="answer one case and peer per line of stdin (the protocol of qkv bench)")
    parser.add_argument("--threads", type=int, default=0, help="threads for every peer (0 = os.cpu_count())")
    parser.add_argument("--peers", default=",".join(KNOWN_PEERS),
                        help="comma-separated peers to run (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    names = [p for p in args.peers.split(",") if p]
    unknown = [p for p in names if p not in PEER_CLASSES]
    if unknown:
        print(f"peers.py: unknown peer(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PEERS)}", file=sys.stderr)
        return 2
    # The protocol (or the report) owns the real stdout; whatever a library
    # prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if args.serve:
        progress = Progress()
        peers = Peers(names, threads, progress)
        progress.finish()
        return serve(peers, names, out)
    text = sys.stdin.read() if args.cases == "-" else open(args.cases).read()
    raw = json.loads(text)
    cases = [normalize_case(c) for c in (raw["cases"] if isinstance(raw, dict) else raw)]
    progress = Progress()
    peers = Peers(names, threads, progress)
    report = run_list(peers, names, cases, progress)
    json.dump(report, out, indent=1)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
