"""bench/peers.py --serve, the protocol `qkv bench` speaks with it: a first line
naming the peers, then one answer line per request line, in order, whatever
is installed. With torch importable its answer is a real time."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "peers.py")
CASE = {"name": "d32-h4/2-s67-causal-fp32", "seq_q": 67, "seq_kv": 67, "heads": 4, "kv_heads": 2,
        "head_dim": 32, "causal": True, "dtype": "fp32"}


def _serve(requests, peers="torch,onnxruntime"):
    """peers.py's stdout lines after sending `requests` (lines) and closing its input."""
    run = subprocess.run([sys.executable, PEERS, "--serve", "--threads", "1", "--peers", peers],
                         input="".join(line + "\n" for line in requests), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_one_answer_per_request_in_order():
    requests = [json.dumps({"peer": peer, "case": dict(CASE, causal=causal)})
                for causal in (True, False) for peer in ("torch", "onnxruntime")]
    header, *answers = _serve(requests)
    assert set(header["peers"]) == {"torch", "onnxruntime"}
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers):
        asked = json.loads(request)
        assert answer["case"] == asked["case"]["name"] and answer["impl"] == asked["peer"]
        # Either a time or why not, never neither.
        assert answer.get("seconds", 0) > 0 or answer["unavailable"]
        if "unavailable" in header["peers"][asked["peer"]]:
            assert answer["unavailable"] == header["peers"][asked["peer"]]["unavailable"]
    if importlib.util.find_spec("torch") is not None:
        assert answers[0]["seconds"] > 0 and "unavailable" not in answers[0]


def test_a_bad_request_is_answered_and_the_server_goes_on():
    header, bad, unknown, good = _serve(
        ["not json", json.dumps({"peer": "nope", "case": CASE}), json.dumps({"peer": "torch", "case": CASE})],
        peers="torch")
    assert list(header["peers"]) == ["torch"]
    assert bad["unavailable"].startswith("bad request")
    assert unknown["impl"] == "nope" and "not asked for" in unknown["unavailable"]
    assert good["case"] == CASE["name"] and good["impl"] == "torch"
