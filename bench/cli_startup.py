"""How long ``fitchat --help`` takes, against a bare ``python -c pass`` in the same run.

    python bench/cli_startup.py [--runs N]

Prints the median wall time of each and the ratio. The target for ``fitchat --help`` is <= 150 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    fitchat = shutil.which("fitchat") or f"{sys.prefix}/bin/fitchat"
    baseline = median_seconds([sys.executable, "-c", "pass"], args.runs)
    help_time = median_seconds([fitchat, "--help"], args.runs)
    print(f"python -c pass   median {baseline * 1000:6.1f} ms")
    print(f"fitchat --help   median {help_time * 1000:6.1f} ms  (target <= 150 ms)")
    print(f"ratio            {help_time / baseline:.2f}x the bare interpreter start")
    return 0 if help_time <= 0.150 else 1


if __name__ == "__main__":
    sys.exit(main())
