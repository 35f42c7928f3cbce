"""``fitchat serve``: the model behind an OpenAI-compatible HTTP API, for editors, scripts and notebooks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fitchat.cli.fit import add_load_settings_arguments, settings_from_args
from fitchat.cli.options import add_rpc_argument
from fitchat.format import printable

#: Where the API key may come from instead of --api-key (which others on the machine can read in the process list).
API_KEY_ENV = "FITCHAT_API_KEY"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a local GGUF model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
        "/v1/completions, /v1/models, /health), loaded as 'fitchat fit' plans it. MODEL is a .gguf path, "
        "'repo:QUANT' already downloaded, or 'starter'. Binds 127.0.0.1 unless --host says otherwise. "
        "Requests beyond the loaded engines wait their turn; ctrl+c lets replies in progress finish, then exits.",
    )
    p.add_argument("model", metavar="MODEL", help="a .gguf path, repo:QUANT or 'starter'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--ctx", type=int, help="context size in tokens (default: the fit plan's, 4096)")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1 routes (also read from ${API_KEY_ENV})")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="engines to load, each serving one request at a time (default 1; each holds its own "
                   "context memory and shares the CPU threads with the others)")
    p.add_argument("--threads", type=int, help="CPU threads per engine (default: measured)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload (default: the fit plan's)")
    add_load_settings_arguments(p)
    add_rpc_argument(p)
    p.set_defaults(func=run)


def _usage(message: str) -> Exception:
    from fitchat.errors import FitchatError

    err = FitchatError(message)
    err.exit_code = 2
    return err


def _say(message: str) -> None:
    print(f"fitchat: {printable(message, 500, one_line=True)}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from fitchat.hub.store import resolve_model

    if not 0 <= args.port <= 65535:
        raise _usage("--port must be between 0 and 65535")
    if args.parallel < 1:
        raise _usage("--parallel must be at least 1")
    if args.rpc and args.parallel > 1:
        raise _usage("--rpc takes --parallel 1: a worker serves one engine at a time")
    for name in ("ctx", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _usage(f"--{name} must be at least 1")
    if args.gpu_layers is not None and args.gpu_layers < -1:
        raise _usage("--gpu-layers must be -1 (all layers) or 0 or more")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise _usage("--api-key is empty")

    from fitchat.llama.planned import load_planned
    from fitchat.serve.app import ServeConfig
    from fitchat.serve.server import bind, is_loopback, serve

    local = resolve_model(args.model)
    path = Path(local.path)
    name = local.repo or local.file
    model_id = path.stem if local.source == "file" else local.ref  # what a request's "model" names
    aliases = tuple(dict.fromkeys(a for a in (args.model, path.name, path.stem, local.ref, name) if a and a != model_id))
    shown = printable(model_id, 120, one_line=True)

    if not is_loopback(args.host):
        _say(f"WARNING: listening on {args.host} exposes the model to every machine that can reach this one"
             + ("" if api_key else f"; without an API key anyone there can use it: set --api-key or ${API_KEY_ENV}"))
    sock = bind(args.host, args.port)
    settings = settings_from_args(args)
    print(f"Loading {shown}…", file=sys.stderr, flush=True)

    def load_engine() -> Any:
        return load_planned(path, name, ctx=args.ctx, settings=settings, n_threads=args.threads,
                            gpu_layers=args.gpu_layers, on_notice=_say, moe_cpu_layers=args.cpu_moe, rpc=args.rpc)

    def ready(url: str) -> None:
        print(f"serving {shown} on {url}", flush=True)

    def stopping(active: int) -> None:
        _say(f"stopping: letting {active} repl{'y' if active == 1 else 'ies'} finish" if active else "stopping")

    config = ServeConfig(model_id=model_id, aliases=aliases, api_key=api_key, parallel=args.parallel)
    return serve(config, load_engine, host=args.host, port=args.port, on_ready=ready, on_stopping=stopping, sock=sock)
