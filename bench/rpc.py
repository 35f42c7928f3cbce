"""The price of the RPC hop: decode tokens/s of a model split over two local workers against the same model all local.

    python bench/rpc.py [--model FILE.gguf] [--threads N] [--tokens N] [--runs N]

Starts two ``fitchat worker``\\s on 127.0.0.1 (CPU backend, ``--threads`` each), loads the model once all
local and once split over the workers (``--rpc``, the split fitchat plans: all layers on the workers,
about half each), runs the same greedy reply ``--runs`` times on each and prints the median decode rates
and their ratio. Needs a llama-cpp-python built with ``-DGGML_RPC=ON``.

On loopback the hop costs the per-token round trips through ggml-rpc (each device boundary: a graph
send, the hidden state across, a synchronise) and no bandwidth to speak of; over a real network add, per
token, ``hops × latency`` plus ``hops × n_embd × 4 bytes / bandwidth`` (see the README's figures).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(threads: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fitchat", "worker", "--port", str(port), "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        _, err = proc.communicate()
        why = (err.strip().splitlines() or [line.strip() or "no output"])[-1]
        raise SystemExit(f"fitchat worker did not start: {why}")
    proc.stderr.close()  # llama.cpp's per-connection lines: not read, so not kept either
    return proc, f"127.0.0.1:{port}"


def decode_rate(engine: object, tokens: int) -> float:
    from fitchat.llama.engine import SamplingSettings

    settings = SamplingSettings(temperature=0, max_tokens=tokens, seed=1)
    engine.reset()  # type: ignore[attr-defined]
    for _piece in engine.stream(PROMPT, settings):  # type: ignore[attr-defined]
        pass
    return float(engine.last_stats.decode_tokens_per_s)  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: the starter model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for name in ("threads", "tokens", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    from fitchat.llama.rpc import require_rpc

    require_rpc()
    if args.model is None:
        from fitchat.hub.store import resolve_model

        args.model = Path(resolve_model("starter").path)
    from fitchat.llama.planned import load_planned

    workers: list[tuple[subprocess.Popen[str], str]] = []
    t0 = time.monotonic()
    local: list[float] = []
    split: list[float] = []
    devices: dict[str, object] = {}
    try:
        workers += [start_worker(args.threads), start_worker(args.threads)]  # inside: a failed second stops the first
        # One engine at a time (an idle engine's threads would spin on the cores the other needs); the split
        # runs between two all-local rounds, so a machine that gets busier or quieter moves both alike.
        for name, rpc, rates in (("local", (), local), ("split", tuple(ep for _, ep in workers), split),
                                 ("local", (), local)):
            engine = load_planned(args.model, args.model.name, ctx=2048, n_threads=args.threads, rpc=rpc)
            try:
                devices[name] = engine.devices
                rates.extend(decode_rate(engine, args.tokens) for _ in range(args.runs))
            finally:
                engine.close()
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait(10)
    local_devices, split_devices = devices["local"], devices["split"]
    lo, sp = statistics.median(local), statistics.median(split)
    print(f"model {args.model.name}, {args.tokens} tokens, {args.runs} runs, {args.threads} threads "
          f"({time.monotonic() - t0:.0f} s)")
    print(f"  all local      {lo:7.1f} tok/s  {local_devices}")
    print(f"  two workers    {sp:7.1f} tok/s  {split_devices}")
    print(f"  ratio          {sp / lo:7.2f}  (split / local: the price of the RPC hop on loopback)")
    print(f"  added per token {1000 / sp - 1000 / lo:6.1f} ms  (roughly fixed per token and hop: a bigger model's "
          "own time per token hides more of it)")
    return 0


if __name__ == "__main__":
    from fitchat.errors import FitchatError

    try:
        sys.exit(main())
    except FitchatError as exc:  # no starter model, no RPC build, a worker gone: one line
        raise SystemExit(f"bench/rpc.py: {exc}") from None
