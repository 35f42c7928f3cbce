"""Options shared by fitchat's commands: sizes, context lengths and the llama.cpp load settings.

One parser per kind of value, so ``fit``, ``pull`` and ``chat`` read ``8k`` or ``8G`` the same way, and a
lever that ``fit`` names can be passed to ``chat`` as it is written.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fitchat.errors import FitchatError
from fitchat.format import quoted

if TYPE_CHECKING:
    from fitchat.model.estimate import LoadSettings

T = TypeVar("T")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class BadOption(FitchatError):
    """A command-line value fitchat cannot use."""

    exit_code = 2


def parse_size(text: str) -> int:
    """``'8G'``, ``'8GiB'``, ``'8GB'``, ``'512M'``, ``'1.5g'`` or a byte count -> bytes (binary units)."""
    m = _SIZE_RE.match(str(text))
    try:
        if not m:
            raise ValueError(text)
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    except (ValueError, OverflowError):  # OverflowError: more digits than a float holds (infinity)
        raise BadOption(f"cannot read {quoted(text)} as a size; write it like 8G, 512M or 17179869184") from None


def parse_ctx(text: str) -> int:
    """``'8k'`` -> 8192, ``'4096'`` -> 4096."""
    t = str(text).strip().lower()
    try:
        value = int(float(t[:-1]) * 1024) if t.endswith("k") else int(t)
    except (ValueError, OverflowError):  # OverflowError: 'infk', or more digits than a float holds
        raise BadOption(f"cannot read {quoted(text)} as a context length; write it like 4096 or 8k") from None
    if value < 1 or value > 1 << 24:
        raise BadOption(f"context {quoted(text)} is out of range (1 to 16M tokens)")
    return value


def parse_cpu_moe(text: str) -> int:
    """``--cpu-moe``: ``'all'`` -> -1 (the MoE experts of every layer in RAM), ``'20'`` -> the first 20 layers'.

    ASCII digits only (``str.isdigit`` also takes '²' and other scripts' digits), and no more layers than a
    model can have (fitchat.model.gguf_spec.MAX_LAYERS); a count above the model's own is its every layer.
    """
    from fitchat.model.gguf_spec import MAX_LAYERS

    t = str(text).strip().lower()
    if t == "all":
        return -1
    if not (t.isascii() and t.isdigit()):
        raise BadOption(f"cannot read {quoted(text)} as --cpu-moe; write a number of layers (like 20) or all")
    if len(t) > len(str(MAX_LAYERS)) or int(t) > MAX_LAYERS:
        raise BadOption(f"--cpu-moe {quoted(text)} is more layers than any model has; write at most {MAX_LAYERS:,} or all")
    return int(t)


def option_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` that reports a bad value as a usage error (exit 2), not a traceback."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except BadOption as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def add_load_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The load-setting flags shared by ``fit`` and ``chat``, so a lever ``fit`` names can be used."""
    p.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default=None, help="KV cache type (default f16)")
    p.add_argument("--n-ubatch", type=int, default=None, metavar="N", help="micro-batch size (default 512)")
    p.add_argument("--n-batch", type=int, default=None, metavar="N", help="batch size (default 512)")
    p.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=None,
                   help="flash attention (default on)")
    swa = p.add_mutually_exclusive_group()
    swa.add_argument("--swa-window", dest="swa_full", action="store_false", default=None,
                     help="keep only the window for sliding-window layers (less memory, no prefix reuse)")
    swa.add_argument("--swa-full", dest="swa_full", action="store_true", help="full-size SWA cache (default)")
    p.add_argument("--cpu-moe", type=option_type(parse_cpu_moe), default=None, metavar="N|all",
                   help="keep the MoE experts of the first N layers (or all) in RAM, the rest on the GPU "
                        "(default: the fit plan's choice; 0 turns it off)")


def settings_from_args(args: argparse.Namespace) -> LoadSettings:
    """LoadSettings from the command line, starting from the defaults fitchat chats with."""
    import dataclasses

    from fitchat.model.estimate import DEFAULT_SETTINGS

    changes: dict[str, Any] = {}
    if args.kv_type is not None:
        changes.update(type_k=args.kv_type, type_v=args.kv_type)
        if args.kv_type != "f16" and args.flash_attn is None:
            changes["flash_attn"] = True
    if args.flash_attn is not None:
        changes["flash_attn"] = args.flash_attn
    if args.n_ubatch is not None:
        changes["n_ubatch"] = args.n_ubatch
    if args.n_batch is not None:
        changes["n_batch"] = args.n_batch
    if args.swa_full is not None:
        changes["swa_full"] = args.swa_full
    from fitchat.llama.smoke import settings_for_this_build

    return settings_for_this_build(dataclasses.replace(DEFAULT_SETTINGS, **changes))


def parse_rpc(text: str) -> tuple[str, ...]:
    """``--rpc HOST:PORT[,HOST:PORT…]``: the workers, checked (fitchat.llama.rpc holds the rule)."""
    from fitchat.llama.rpc import BadEndpoint, parse_endpoints

    try:
        return parse_endpoints(text)
    except BadEndpoint as exc:
        raise BadOption(str(exc)) from None


def add_rpc_argument(p: argparse.ArgumentParser) -> None:
    """``--rpc``, shared by ``fit``, ``chat`` and ``serve``: layers also go to these ``fitchat worker``\\s."""
    p.add_argument("--rpc", type=option_type(parse_rpc), default=(), metavar="HOST:PORT[,HOST:PORT...]",
                   help="also use the memory of these 'fitchat worker's (llama.cpp RPC); the layers are split "
                   "over them and this machine")
