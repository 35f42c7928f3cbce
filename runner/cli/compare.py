"""``fitchat compare``: what a smaller quant costs, measured here (KL divergence, top-1 agreement, perplexity, probes, speed)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from fitchat.format import printable


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="measure what smaller quants cost: agreement with a reference, perplexity, probes, speed",
        description="Compare GGUF variants of one model against the most precise one that fits: mean KL "
        "divergence, top-1 agreement and perplexity (scored as llama-perplexity scores them), arithmetic and "
        "needle-in-a-haystack probes, and decode speed on this machine. Results are cached.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="GGUF files, a folder of them, or a repo whose variants you pulled (e.g. org/name)")
    p.add_argument("--quants", metavar="Q,Q,...",
                   help="only these variants (e.g. Q4_K_M,Q5_K_M); the reference is still the most precise one found")
    p.add_argument("--ctx", type=int, default=512, metavar="N",
                   help="context: chunk size of the text and needle haystack length (default 512, as llama-perplexity)")
    p.add_argument("--text", type=Path, metavar="FILE", help="score your own UTF-8 text instead of the bundled one")
    p.add_argument("--budget", type=int, default=8192, metavar="TOKENS",
                   help="most tokens each variant evaluates, text and probes together (default 8192)")
    p.add_argument("--arithmetic", type=int, default=20, metavar="N", help="arithmetic problems (default 20)")
    p.add_argument("--needle-depths", default="0.1,0.5,0.9", metavar="D,D,...",
                   help="where the needle is hidden, 0 = start, 1 = end (default 0.1,0.5,0.9; 'none' to skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe problems (default 0)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--json", action="store_true", help="print the machine-readable report")
    p.set_defaults(func=run)


def _depths(text: str) -> tuple[float, ...]:
    from fitchat.compare.run import CompareError

    if text.strip().lower() in ("", "none"):
        return ()
    try:
        depths = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CompareError(f"--needle-depths {text!r}: give numbers between 0 and 1, like 0.1,0.5,0.9") from None
    if any(not 0 <= d <= 1 for d in depths):
        raise CompareError(f"--needle-depths {text!r}: each depth lies between 0 and 1")
    return depths


#: The progress line stays on one terminal line (a long file name is cut).
LINE_CHARS = 120


class _ProgressLine:
    """One self-rewriting line on a terminal's stderr; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.width = 0

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        bar = int(30 * p.fraction)
        line = printable(f"[{'#' * bar}{' ' * (30 - bar)}] {100 * p.fraction:3.0f}%  {p.variant}  {p.stage}",
                         LINE_CHARS, one_line=True)
        pad = max(0, self.width - len(line))
        self.width = len(line)
        sys.stderr.write("\r" + line + " " * pad)
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from fitchat.compare import run as C
    from fitchat.errors import Cancelled

    if args.budget is not None and args.budget < 1:
        raise C.BudgetTooSmall("--budget must be a positive number of tokens")
    if args.arithmetic < 0:
        raise C.CompareError("--arithmetic must be 0 or more")
    settings = C.CompareSettings(
        ctx=args.ctx,
        budget=args.budget,
        text_path=args.text,
        probes=C.ProbeSet(seed=args.seed, arithmetic=args.arithmetic, needle_depths=_depths(args.needle_depths)),
        n_threads=args.threads,
    )
    if settings.ctx < C.MIN_CTX:
        raise C.CompareError(f"--ctx {settings.ctx} is too small; use {C.MIN_CTX} or more (llama-perplexity's default is 512)")
    quants = args.quants.split(",") if args.quants is not None else None
    if quants is not None:
        C.wanted_quants(quants)  # an empty --quants fails before any header is read
    C.read_text(settings.text_path)  # a bad --text fails before any model loads
    candidates = C.resolve_sources(args.sources)
    selected = C.select_quants(candidates, quants)

    progress = _ProgressLine()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    finished = threading.Event()

    def work() -> None:
        try:
            outcome["report"] = C.compare(candidates, only=selected, settings=settings, progress=progress, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc
        finally:
            finished.set()

    # The main thread waits on an Event, not on Thread.join: a Ctrl-C that lands inside join() can
    # leave the thread looking finished while it still runs.
    threading.Thread(target=work, name="fitchat-compare", daemon=True).start()
    try:
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:
        cancel.set()
        progress.clear()
        print("fitchat: cancelling…", file=sys.stderr)
        finished.wait()
    progress.clear()
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, Cancelled):
            raise Cancelled("compare cancelled; finished variants stay cached, nothing partial was kept") from None
        raise exc
    report = outcome["report"]
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    # Variant and file names come from outside: the table and the verdict are printed as plain text.
    print(printable(C.render_table(report)))
    print()
    for line in C.verdict_lines(report):
        print(printable(line))
    scored = max((v.tokens_scored for v in report.variants), default=0)
    cached = sum(v.cached for v in report.variants)
    print()
    print(printable(f"Context {report.ctx}, {scored} tokens scored per variant, from {report.text}"
                    + (f"; {cached} of {len(report.variants)} rows from the cache" if cached else "") + "."))
    return 0

