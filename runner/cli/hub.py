"""``fitchat search / pull / ls / rm / import``: find models, download them, manage what is on disk."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fitchat.format import human_bytes, printable, table_lines


def _positive_int(text: str) -> int:
    """An argparse ``type=`` for counts: a whole number of at least 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number; give 1 or more")
    return value


def register(subparsers: Any) -> None:
    from fitchat.cli.options import option_type, parse_ctx

    p = subparsers.add_parser("search", help="search the Hub for GGUF models (no TEXT: the curated list)")
    p.add_argument("text", nargs="?", default="", help="words to look for in repo names")
    p.add_argument("--limit", type=_positive_int, default=20, help="most results to show (default 20)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_search)

    p = subparsers.add_parser("pull", help="download a model: org/name[:QUANT] from the Hub, or 'starter'")
    p.add_argument("ref", metavar="REPO[:QUANT]", help="a Hub repo id, optionally with a quant (Q4_K_M …), or 'starter'")
    p.add_argument("--quant", help="the variant to download (default: the one that fits this machine best)")
    p.add_argument("--ctx", type=option_type(parse_ctx), default=None,
                   help="context length the recommendation plans for (default 4096; 8k works)")
    p.add_argument("--json", action="store_true",
                   help='print {"path", "sha256", "size_bytes", "repo", "file", "quant"} when done')
    p.set_defaults(func=run_pull)

    p = subparsers.add_parser("ls", help="list downloaded and imported models, and those Ollama, LM Studio and "
                              "llama.cpp downloaded (FITCHAT_STORES=none leaves those out)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run_ls)

    p = subparsers.add_parser("rm", help="remove downloaded models (imported files are only unregistered; "
                              "other runners' models are left to their own tools)")
    p.add_argument("refs", nargs="+", metavar="REPO[:QUANT]",
                   help="what to remove: org/name[:QUANT], local/NAME, starter or a path")
    p.set_defaults(func=run_rm)

    p = subparsers.add_parser("import", help="register a local .gguf file (validated first)")
    p.add_argument("path", help="path to a .gguf file (the first part of a split set)")
    p.add_argument("--json", action="store_true", help="print the registered model as JSON")
    p.set_defaults(func=run_import)


def run_search(args: argparse.Namespace) -> int:
    from fitchat.hub import catalog

    if not args.text:
        entries = catalog.curated()
        if args.json:
            print(json.dumps([e.to_json() for e in entries], indent=2))
            return 0
        rows = [(e.repo, f"{e.params_b:g}B", f"{e.context // 1024}k", ", ".join(q for q, _ in e.variants)) for e in entries]
        _table(("REPO", "PARAMS", "CONTEXT", "VARIANTS"), rows)
        print("\n'fitchat fit REPO' shows what fits this machine; 'fitchat pull REPO' downloads the best fit.", file=sys.stderr)
        return 0
    hits = catalog.search(args.text, limit=args.limit)
    if args.json:
        print(json.dumps([h.to_json() for h in hits], indent=2))
        return 0
    if not hits:
        print(f"no GGUF repos match {args.text!r}", file=sys.stderr)
        return 0
    rows = [(h.repo, f"{h.downloads:,}", f"{h.likes:,}", ("curated " if h.curated else "") + ("gated" if h.gated else ""))
            for h in hits]
    _table(("REPO", "DOWNLOADS", "LIKES", ""), rows)
    return 0


def run_pull(args: argparse.Namespace) -> int:
    import threading

    from fitchat.errors import Cancelled
    from fitchat.hub import download

    def notice(msg: str) -> None:
        print(printable(msg), file=sys.stderr)

    ctx = args.ctx if args.ctx else download.DEFAULT_CTX
    try:
        model = download.pull(args.ref, quant=args.quant, ctx=ctx, cancel=threading.Event(), notice=notice)
    except KeyboardInterrupt:
        raise Cancelled("download interrupted; run the same pull again to resume where it stopped") from None
    if args.json:
        print(json.dumps({"path": str(model.path), "sha256": model.sha256, "size_bytes": model.size_bytes,
                          "repo": model.repo, "file": model.file, "quant": model.quant}))
        return 0
    print(printable(f"{model.ref}: {model.file}, {human_bytes(model.size_bytes)}, sha256 {model.sha256 or 'n/a'}"),
          file=sys.stderr)
    print(printable(model.path))
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from fitchat.hub import store

    models = store.list_local()
    if args.json:
        print(json.dumps([m.to_json() for m in models], indent=2))
        return 0
    if not models:
        print("no models yet: 'fitchat pull starter' gets a small one, 'fitchat search' lists more", file=sys.stderr)
        return 0
    rows = [(m.ref, m.quant, human_bytes(m.size_bytes), m.source, str(m.path)) for m in models]
    _table(("MODEL", "QUANT", "SIZE", "SOURCE", "PATH"), rows)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from fitchat.hub import store

    for ref in args.refs:
        for m in store.remove(ref):
            if m.source == "imported":
                print(printable(f"unregistered {m.ref} (the file stays at {m.path})"))
            else:
                print(printable(f"removed {m.ref} ({human_bytes(m.size_bytes)} freed)"))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from fitchat.hub import store

    m = store.import_file(args.path)
    if args.json:
        print(json.dumps(m.to_json()))
        return 0
    print(printable(f"imported {m.ref}: {m.quant}, {human_bytes(m.size_bytes)} (use it with 'fitchat chat {m.ref}')"),
          file=sys.stderr)
    print(printable(m.path))
    return 0


def _table(header: tuple[str, ...], rows: Sequence[Sequence[object]]) -> None:
    for line in table_lines([header, *rows]):
        print(line)
