"""``fitchat doctor``: check the llama.cpp build, CUDA, Metal, disk, Hub and token; print each fix."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check the llama.cpp build, CUDA, Metal, disk space, the Hub and the HF token",
        description="Check what stands between this machine and a fast local chat, and print the exact fix "
        "for each problem. Exits 1 when a check fails (warnings alone exit 0).",
    )
    p.add_argument("--json", action="store_true", help="print the machine-readable report")
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="how long to wait for the Hub (default: 5)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fitchat.doctor import render_report, run_doctor
    from fitchat.format import printable

    report = run_doctor(timeout_s=max(0.1, args.timeout))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(printable(render_report(report)))
    return 1 if report.failed else 0
