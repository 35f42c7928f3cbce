"""Reading GGUF headers: time against the stock reader, and bytes fetched from a Hub.

    python bench/gguf_header.py [--runs N]

1. Local files: ``fitchat.model.gguf_spec.read_spec`` against gguf's own ``GGUFReader`` (the baseline),
   median of N runs each, in the same process; prints the ratio. Besides the two real models, a
   synthetic header of 20,000 tensor infos (what a many-tensor model costs: gguf builds six numpy
   views per tensor, fitchat's bounded scan walks them with struct).
2. Remote headers: ``read_remote_spec`` through the local Hub test server (a real
   ``huggingface_hub`` client, a 302 to a CDN host, HTTP Range), printing how many bytes each
   variant needed: SmolLM2 (49k vocabulary) and gemma-3-270m (262k vocabulary).
3. A repo's variants planned from their headers (``fit_remote_repo``) over a slow link (the server
   waits ``--latency`` before each CDN answer and sends ``--rate`` bytes/s): one header at a time
   (the baseline) against the default number at once, in the same run; prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fitchat.hub.remote import REMOTE_HEADER_WORKERS, fit_remote_repo, read_remote_spec
from fitchat.model.gguf_spec import read_spec
from fitchat.model.hardware import detect_hardware
from tests import gguf_factory, models
from tests.hubserver import LocalHub

MiB = 1024 * 1024


def median_time(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each CDN answer")
    parser.add_argument("--rate", type=float, default=20e6, help="CDN bytes per second")
    args = parser.parse_args()
    from gguf import GGUFReader

    files = {
        "SmolLM2-135M Q8_0 (49k vocab)": models.smollm2_variant("Q8_0"),
        "gemma-3-270m Q4_K_M (262k vocab)": models.gemma3_270m(),
    }
    read_spec(files["SmolLM2-135M Q8_0 (49k vocab)"])  # imports
    print("Local header parse, median of", args.runs, "runs (noisy on a shared machine; compare the ratio)")
    with tempfile.TemporaryDirectory(prefix="fitchat-bench-") as tmp:
        n = 20_000
        many = Path(tmp) / "many-tensors.gguf"
        infos = [gguf_factory.tensor_info(f"blk.{i // 10}.t{i % 10}.weight", [32], 0, 128 * i) for i in range(n)]
        many.write_bytes(gguf_factory.raw_gguf(gguf_factory.llama_kvs(), infos, b"\0" * 128 * n))
        for name, path in {**files, "synthetic, 20,000 tensors": many}.items():
            ours = median_time(lambda p=path: read_spec(p), args.runs)
            stock = median_time(lambda p=path: GGUFReader(p), args.runs)
            print(f"  {name:34} read_spec {ours * 1000:7.0f} ms   GGUFReader {stock * 1000:7.0f} ms   "
                  f"{stock / ours:5.1f}x faster")

    print("Remote header (local Hub server, Range reads sized by the header scan, one parse)")
    with LocalHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        hub.add_repo("bench/models-GGUF", {f"{name.split(' (')[0].replace(' ', '-')}.gguf": p for name, p in files.items()})
        for name in files:
            filename = f"{name.split(' (')[0].replace(' ', '-')}.gguf"
            hub.requests.clear()
            spec = read_remote_spec("bench/models-GGUF", filename, endpoint=hub.endpoint)
            requests = len(hub.cdn_requests())
            print(f"  {name:34} header {spec.header_bytes / MiB:5.2f} MiB, read {spec.bytes_read / MiB:5.2f} MiB "
                  f"in {requests} range request(s), file {spec.size_bytes / MiB:6.1f} MiB")

        variants = {f"SmolLM2-135M-Instruct-{q}.gguf": models.smollm2_variant(q) for q in ("Q8_0", "Q5_K_M", "Q4_K_M", "Q4_1")}
        hub.add_repo("bench/SmolLM2-GGUF", variants)
        hub.delay(args.latency, route="cdn")
        hub.slow(args.rate)
        hw = detect_hardware()
        took = {}
        for workers in (1, REMOTE_HEADER_WORKERS):
            took[workers] = median_time(
                lambda w=workers: fit_remote_repo("bench/SmolLM2-GGUF", hw, 4096, endpoint=hub.endpoint, max_workers=w),
                args.runs)
        print(f"Planning a repo of {len(variants)} variants from their headers ({args.latency * 1000:.0f} ms before each "
              f"CDN answer, {args.rate / 1e6:.0f} MB/s), median of {args.runs} runs")
        print(f"  one header at a time {took[1] * 1000:7.0f} ms   {REMOTE_HEADER_WORKERS} at once "
              f"{took[REMOTE_HEADER_WORKERS] * 1000:7.0f} ms   {took[1] / took[REMOTE_HEADER_WORKERS]:5.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
