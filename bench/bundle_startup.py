"""Start time of the standalone bundle against the installed ``fitchat``, in the same run.

    python bench/bundle_startup.py --bundle dist/fitchat/fitchat [--bundle dist/fitchat-onefile] [--runs N]

Times ``fitchat --help`` (no llama.cpp) and ``fitchat hw --json`` (loads the llama.cpp libraries)
for the installed console script of this environment and for each bundle, and prints medians and
each bundle's ratio to the installed command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli_startup import median_seconds  # bench/ is on sys.path when run as a script


def size_bytes(path: Path) -> int:
    """The file's size, or the size of the folder it sits in (a one-folder bundle)."""
    folder = path.parent
    if (folder / "_internal").is_dir():
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", required=True, type=Path, help="a bundle's fitchat executable")
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    installed = Path(sys.prefix) / "bin" / "fitchat"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    for argv in (["--help"], ["hw", "--json"]):
        base = median_seconds([str(installed), *argv], args.runs)
        rows.append((f"installed fitchat {' '.join(argv)}", base, None))
        for bundle in args.bundle:
            t = median_seconds([str(bundle), *argv], args.runs)
            rows.append((f"{bundle} {' '.join(argv)}", t, t / base))
    for label, t, ratio in rows:
        extra = f"  ({ratio:.2f}x installed)" if ratio is not None else ""
        print(f"{label:<60} median {t * 1000:7.1f} ms{extra}")
    for bundle in args.bundle:
        print(f"{bundle}: {size_bytes(bundle) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
