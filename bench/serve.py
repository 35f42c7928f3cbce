"""``fitchat serve`` against llama-cpp-python's own server, measured in one run.

    python bench/serve.py [--model PATH] [--threads 2] [--tokens 128] [--rounds 5] [--json]

Needs llama-cpp-python's ``[server]`` extra (fastapi, sse-starlette, ...) installed beside fitchat;
fitchat itself does not depend on it.

1. Speed: both servers run at once on the same model, context, threads (decode and batch), load
   settings (flash attention, batch sizes, f16 KV) and sampler (temperature 0, top-k 40, top-p 0.95,
   min-p 0.05, repeat penalty 1.1: the defaults both share). Requests alternate between them, each a
   streamed chat whose prompt (~400 tokens) starts with the round number, so neither reuses a cached
   prefix. Per request: TTFT (request sent to the first content chunk) and decode tokens/s (content
   chunks after the first, one per token on both servers, over the time from the first to the last).
   The ratios are medians of per-round ratios (fitchat / llama-cpp-python; > 1 means fitchat is faster
   at decoding, < 1 means its TTFT is shorter).
2. Behaviour: on each server, a second request while a stream is running (does the first stream still
   end with its finish_reason and [DONE], with all its tokens?), and a body that is not JSON (status).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSAGE = (ROOT / "runner" / "data" / "alice_ch1-3.txt").read_text(encoding="utf-8")[:1600]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr or ()), daemon=True).start()

    def wait_ready(self, path: str = "/v1/models", timeout: float = 300) -> None:
        """Until ``path`` answers 200: fitchat's ``/health`` only once the model is loaded (its model list
        answers at once), llama-cpp-python's model list once its server is up (it loads before it listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: {''.join(self.err)[-1500:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} did not get ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stream(port: int, body: dict[str, Any], on_chunk: Any = None) -> dict[str, Any]:
    """One streamed chat: timings, pieces, finish reason, whether [DONE] came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    times: list[float] = []
    finish, done, text = None, False, []
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                times.append(time.perf_counter())
                text.append(content)
                if on_chunk:
                    on_chunk(len(times))
            finish = choice.get("finish_reason") or finish
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"port {port} answered {resp.status}; the figures would be meaningless")
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0
    return {"ttft_s": times[0] - t0 if times else float("nan"), "decode_tps": decode, "tokens": len(times),
            "finish": finish, "done": done, "text": "".join(text), "status": resp.status}


def raw_status(port: int, body: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode("utf-8", "replace")[:200]


def overlap(port: int, tokens: int) -> dict[str, Any]:
    """A second request while a first stream runs: what happens to the first?"""
    body = {"messages": [{"role": "user", "content": "Write a very long story about a dragon who bakes bread."}],
            "temperature": 0, "max_tokens": tokens}
    started = threading.Event()
    first: dict[str, Any] = {}
    alone = stream(port, body)

    def run_first() -> None:
        first.update(stream(port, body, on_chunk=lambda n: n >= 5 and started.set()))

    t = threading.Thread(target=run_first)
    t.start()
    started.wait(300)
    second = stream(port, {**body, "max_tokens": 16,
                           "messages": [{"role": "user", "content": "Name a colour."}]})
    t.join(600)
    return {
        "alone_tokens": alone["tokens"], "first_tokens": first.get("tokens"), "first_finish": first.get("finish"),
        "first_done": first.get("done"), "first_same_text": first.get("text") == alone["text"],
        "second_tokens": second["tokens"], "second_finish": second["finish"], "second_done": second["done"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: the test suite's SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from tests.models import smollm2_q4_1

        args.model = smollm2_q4_1()

    from fitchat.model.estimate import DEFAULT_SETTINGS

    kw = DEFAULT_SETTINGS.llama_kwargs()
    home = Path(tempfile.mkdtemp(prefix="fitchat-bench-serve-"))
    env = dict(os.environ, XDG_DATA_HOME=str(home / "data"), XDG_CACHE_HOME=str(home / "cache"),
               XDG_CONFIG_HOME=str(home / "config"))
    env.pop("FITCHAT_API_KEY", None)
    ours_port, theirs_port = free_port(), free_port()
    t = str(args.threads)
    ours = Proc("fitchat serve", [sys.executable, "-m", "fitchat", "serve", str(args.model), "--port", str(ours_port),
                                  "--threads", t, "--ctx", str(args.ctx)], ours_port, env)
    theirs = Proc("llama_cpp.server", [
        sys.executable, "-m", "llama_cpp.server", "--model", str(args.model), "--port", str(theirs_port),
        "--n_ctx", str(args.ctx), "--n_threads", t, "--n_threads_batch", t,
        "--n_batch", str(kw["n_batch"]), "--n_ubatch", str(kw["n_ubatch"]),
        "--flash_attn", str(bool(kw["flash_attn"])), "--verbose", "False",  # (no swa_full flag; SmolLM2 has no SWA)
    ], theirs_port, env)
    try:
        ours.wait_ready("/health")
        theirs.wait_ready()
        base = {"temperature": 0, "max_tokens": args.tokens, "top_p": 0.95, "seed": 1}
        for port in (ours_port, theirs_port):  # warm-up
            stream(port, {**base, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        rounds = []
        for r in range(args.rounds):
            msgs = [{"role": "user", "content": f"Round {r}. Summarise this passage:\n\n{PASSAGE}"}]
            order = [(ours_port, "ours"), (theirs_port, "theirs")]
            row: dict[str, Any] = {}
            for port, who in (order if r % 2 == 0 else order[::-1]):
                row[who] = stream(port, {**base, "messages": msgs})
            rounds.append(row)
        behaviour = {}
        for port, who in ((ours_port, "fitchat serve"), (theirs_port, "llama_cpp.server")):
            behaviour[who] = {"overlap": overlap(port, 200), "invalid_json": raw_status(port, b"{not json")[0]}
    finally:
        ours.stop()
        theirs.stop()

    def med(who: str, key: str) -> float:
        return statistics.median(r[who][key] for r in rounds)

    result = {
        "model": args.model.name, "threads": args.threads, "ctx": args.ctx, "tokens": args.tokens, "rounds": args.rounds,
        "decode_tps": {"fitchat": med("ours", "decode_tps"), "llama_cpp.server": med("theirs", "decode_tps")},
        "ttft_s": {"fitchat": med("ours", "ttft_s"), "llama_cpp.server": med("theirs", "ttft_s")},
        "decode_ratio": statistics.median(r["ours"]["decode_tps"] / r["theirs"]["decode_tps"] for r in rounds),
        "ttft_ratio": statistics.median(r["ours"]["ttft_s"] / r["theirs"]["ttft_s"] for r in rounds),
        "same_text": sum(r["ours"]["text"] == r["theirs"]["text"] for r in rounds),
        "behaviour": behaviour,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}, {args.threads} threads, ctx {args.ctx}, {args.tokens} tokens, {args.rounds} rounds")
    for key, unit in (("decode_tps", "tok/s"), ("ttft_s", "s")):
        v = result[key]
        print(f"  {key:11} fitchat {v['fitchat']:.3f} {unit}   llama_cpp.server {v['llama_cpp.server']:.3f} {unit}")
    print(f"  decode ratio (fitchat / llama_cpp.server): {result['decode_ratio']:.3f}x   "
          f"TTFT ratio: {result['ttft_ratio']:.3f}x   same reply text in {result['same_text']}/{args.rounds} rounds")
    for who, b in behaviour.items():
        o = b["overlap"]
        print(f"  {who}: invalid JSON -> {b['invalid_json']}; a second request during a stream: first stream "
              f"{o['first_tokens']}/{o['alone_tokens']} tokens, finish {o['first_finish']}, [DONE] {o['first_done']}, "
              f"same text as alone {o['first_same_text']}; second {o['second_tokens']} tokens, finish {o['second_finish']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
