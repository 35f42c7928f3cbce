"""Download throughput of ``fitchat pull`` against a bare ``hf_hub_download``, in the same run.

    python bench/download_throughput.py [--rounds N] [--size-mib M]

Both fetch the same file from the same local Hub-compatible server (tests/hubserver.py, run as its own
process: ``/resolve`` answers 302 to a CDN host name, like the Hub) into a fresh HF cache each time,
alternating which goes first. ``fitchat pull`` does more than the bare call: it lists the repo's variants, keeps a resumable
partial, hashes the bytes (sha256) and checks them against the Hub's. The file is the SmolLM2 Q4_1
GGUF from the test fixtures, or ``--size-mib`` random bytes. Prints each round, the medians and the
ratio (fitchat / bare; > 1 means fitchat is slower), plus the ratio against a bare call given the same
1 MiB chunks, which isolates the cost of what fitchat adds. The server shares the CPU with the client, so
absolute MiB/s say little; compare the ratio. fitchat reads in 1 MiB chunks (huggingface_hub: 10 MiB)
and hashes on a second thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPO = "bench/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="downloads per method (default 5)")
    parser.add_argument("--size-mib", type=int, default=0, help="use this many MiB of random bytes instead of the GGUF")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fitchat-bench-"))
    try:
        if args.size_mib:
            source = work / "random.gguf"
            with open(source, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(1 << 20))
        else:
            from tests.models import smollm2_q4_1

            source = smollm2_q4_1()
        size = source.stat().st_size
        served = work / FILE
        served.symlink_to(source)
        server = subprocess.Popen([sys.executable, "-m", "tests.hubserver", "--repo", REPO, str(served)],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            endpoint = server.stdout.readline().strip()  # type: ignore[union-attr]
            os.environ["HF_ENDPOINT"] = endpoint
            os.environ.pop("HF_HUB_OFFLINE", None)
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
            os.environ["XDG_CACHE_HOME"] = str(work / "xdg-cache")
            os.environ["XDG_DATA_HOME"] = str(work / "xdg-data")

            from huggingface_hub import constants, hf_hub_download

            from fitchat.hub import download

            def bare(cache: Path) -> None:
                hf_hub_download(REPO, FILE, cache_dir=str(cache), endpoint=endpoint)

            def fitchat(cache: Path) -> None:
                os.environ["HF_HUB_CACHE"] = str(cache)
                download.pull(f"{REPO}:Q4_1")

            def bare_1mib(cache: Path) -> None:
                default = constants.DOWNLOAD_CHUNK_SIZE
                constants.DOWNLOAD_CHUNK_SIZE = download.CHUNK_BYTES
                try:
                    bare(cache)
                finally:
                    constants.DOWNLOAD_CHUNK_SIZE = default

            methods = {"bare hf_hub_download": bare, "fitchat pull": fitchat, "bare, 1 MiB chunks": bare_1mib}
            times: dict[str, list[float]] = {name: [] for name in methods}
            for name, fn in methods.items():  # warm up: imports, first connections, the server's sha256
                fn(work / f"warm-{len(name)}")
            for i in range(args.rounds):
                order = list(methods.items()) if i % 2 == 0 else list(reversed(methods.items()))
                for name, fn in order:
                    cache = work / f"cache-{i}-{len(name)}"
                    start = time.perf_counter()
                    fn(cache)
                    times[name].append(time.perf_counter() - start)
                    shutil.rmtree(cache)
                if not args.json:
                    print(f"round {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in methods))
        finally:
            server.terminate()
            server.wait()
        med = {name: statistics.median(t) for name, t in times.items()}
        ratio = med["fitchat pull"] / med["bare hf_hub_download"]
        ratio_same_chunks = med["fitchat pull"] / med["bare, 1 MiB chunks"]
        result = {
            "file_bytes": size,
            "rounds": args.rounds,
            "median_s": med,
            "mib_per_s": {name: size / 2**20 / t for name, t in med.items()},
            "ratio_fitchat_over_bare": ratio,
            "ratio_fitchat_over_bare_1mib_chunks": ratio_same_chunks,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for name, t in med.items():
                print(f"{name:<22} median {t:.3f} s  ({size / 2**20 / t:.0f} MiB/s)")
            print(f"ratio fitchat / bare: {ratio:.2f} ({size / 2**20:.0f} MiB file, {args.rounds} rounds)")
            print(f"ratio fitchat / bare with the same 1 MiB chunks: {ratio_same_chunks:.2f} "
                  "(the cost of listing variants, the resumable partial and the sha256 check)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
