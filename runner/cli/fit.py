"""``fitchat fit SOURCE``: what each GGUF variant needs at a context, and whether it fits this machine.

SOURCE is a local .gguf, a directory of them, a Hub repo id (every variant, from its header alone:
no download), or ``repo:QUANT``. ``--gpu-mem`` / ``--ram`` plan for another machine; ``--measure``
loads a local file with llama.cpp (in a child process) and prints its reported buffers beside the
estimate; a Hub variant is measured by llama.cpp's dry run on its header alone (a sparse file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fitchat.cli.options import (
    BadOption,
    add_load_settings_arguments,
    add_rpc_argument,
    option_type,
    parse_ctx,
    parse_size,
    settings_from_args,
)
from fitchat.errors import HubError
from fitchat.format import human_bytes, printable, quoted, table_lines


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fit",
        help="show what a model needs (weights, KV cache, compute buffer) and whether it fits",
        description="Estimate the memory each GGUF variant needs at a context length and plan it for this "
        "machine: full GPU, N of M layers on the GPU, CPU, or too big. SOURCE is a .gguf file, a directory, "
        "a Hub repo id (headers only, no download) or repo:QUANT.",
    )
    p.add_argument("source", metavar="SOURCE", help="a .gguf file, a directory, org/name or org/name:QUANT")
    p.add_argument("--ctx", type=option_type(parse_ctx), default=None, help="context length in tokens (default 4096; 8k works)")
    p.add_argument("--gpu-mem", type=option_type(parse_size), default=None, metavar="BYTES",
                   help="plan for a GPU with this much free memory (8G; 0 = no GPU) instead of this machine's")
    p.add_argument("--ram", type=option_type(parse_size), default=None, metavar="BYTES",
                   help="plan for this much available RAM (16G)")
    p.add_argument("--margin", type=option_type(parse_size), default=None, metavar="BYTES",
                   help="GPU memory to keep free per device (default: 10%% of the GPU, at least 512M, at most 1G)")
    add_load_settings_arguments(p)
    add_rpc_argument(p)
    p.add_argument("--measure", nargs="?", const="auto", choices=("auto", "load", "dry"), default=None,
                   help="also load a local file with llama.cpp and show its reported buffers beside the estimate "
                   "(load: a real CPU load; dry: llama.cpp's no_alloc dry run; auto: load when it fits in RAM); "
                   "a Hub variant gets a dry run on its header alone, nothing downloaded")
    p.add_argument("--json", action="store_true", help="print the machine-readable plan")
    p.set_defaults(func=run)


def resolve_source(source: str) -> tuple[str, Any]:
    """("local", [paths]) or ("remote", (repo, quant|None)) for a SOURCE argument.

    A ``repo:QUANT`` already downloaded is read from disk; a bare repo id is read from the Hub
    (every variant) so the table shows what could be downloaded.
    """
    from fitchat.errors import ModelNotFound
    from fitchat.model.gguf_spec import find_models

    path = Path(source).expanduser()
    if path.is_dir():
        files = find_models(path)
        if not files:
            raise ModelNotFound(f"no .gguf files in {path}")
        return "local", files
    if path.is_file():
        return "local", [path]
    if source.lower().endswith(".gguf") or source.startswith((".", "/", "~")):
        raise ModelNotFound(f"no such file: {source}")
    from fitchat.hub.store import other_store, parse_ref, resolve_model

    if other_store(source):  # another runner's model (ollama/…, lmstudio/…, llamacpp/…) is never on the Hub
        return "local", [Path(resolve_model(source).path)]
    repo, quant = parse_ref(source)
    if quant is not None or repo.lower() == "starter" or repo.lower().startswith("local/"):
        try:
            return "local", [Path(resolve_model(source).path)]
        except ModelNotFound:
            if quant is None:
                raise
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelNotFound(f"{source!r} is not a .gguf file, a directory or a Hub repo id (org/name[:QUANT])")
    return "remote", (repo, quant)


def run(args: argparse.Namespace) -> int:
    from fitchat.hub.remote import fit_remote_repo, read_remote_variants
    from fitchat.model.estimate import DEFAULT_CTX
    from fitchat.model.gguf_spec import read_spec
    from fitchat.model.hardware import detect_hardware
    from fitchat.model.plan import plan_hardware, plan_variants

    if args.rpc and args.measure:  # its figures would be this machine's alone, set against a split's estimate
        raise BadOption("--measure runs llama.cpp on this machine alone, not over --rpc workers; drop one of the two")
    ctx = args.ctx or DEFAULT_CTX
    settings = settings_from_args(args)
    kind, what = resolve_source(args.source)
    hw = plan_hardware(detect_hardware(), gpu_mem=args.gpu_mem, ram=args.ram)
    if args.rpc:
        from fitchat.llama.rpc import with_workers

        hw = with_workers(hw, args.rpc)
    headers: dict[str, Any] = {}  # a remote variant's file -> the header bytes read (for --measure)
    if kind == "local":
        specs = [read_spec(p) for p in what]
        plans = plan_variants(specs, hw, ctx, settings, args.margin, args.cpu_moe)
    else:
        if args.measure == "load":
            raise BadOption("--measure load needs a downloaded file; a Hub variant is measured by a dry run "
                            "(--measure or --measure dry), or run 'fitchat pull' first")
        repo, quant = what
        try:
            if args.measure:
                read = read_remote_variants(repo, quant=quant, keep_headers=True)
                headers = {h.spec.file: h for h in read}
                plans = plan_variants([h.spec for h in read], hw, ctx, settings, args.margin, args.cpu_moe)
            else:
                plans = fit_remote_repo(repo, hw, ctx, settings=settings, margin_bytes=args.margin, quant=quant,
                                        moe_cpu_layers=args.cpu_moe)
        except HubError:
            local = _downloaded(repo, quant)
            if not local:
                raise
            print(f"fitchat: the Hub is out of reach; planning the {len(local)} downloaded variant(s) of {quoted(repo)}",
                  file=sys.stderr)
            plans = plan_variants([read_spec(p) for p in local], hw, ctx, settings, args.margin, args.cpu_moe)

    measurements: list[tuple[Any, Any, Any]] = []
    if args.measure:
        measurements = [_measure(plan, hw, args.measure, headers.get(plan.spec.file)) for plan in plans]
    measured = {id(p): m for p, _, m in measurements}

    if args.json:
        out = {
            "context": ctx,
            "hardware": hw.to_json(),
            "settings": settings.to_json(),
            "margin_bytes": plans[0].margin_bytes,
            "variants": [
                {**p.to_json(), "measured": measured[id(p)].measured_json() if id(p) in measured else None}
                for p in plans
            ],
        }
        if measurements:
            out["measurements"] = [
                {"file": p.spec.file, "estimate": e.to_json(), "measured": m.to_json()} for p, e, m in measurements
            ]
        print(json.dumps(out, indent=2))
        return 0
    print(render(plans, hw, ctx, settings))
    for plan, est, meas in measurements:
        print()
        print(render_measurement(plan, est, meas))
    return 0


def _downloaded(repo: str, quant: str | None) -> list[Path]:
    from fitchat.hub.store import find_local

    return [Path(m.path) for m in find_local(repo, quant)]


def _measure(plan: Any, hw: Any, how: str, header: Any = None) -> tuple[Any, Any, Any]:
    """Measure one plan; returns (plan, the estimate compared, the measurement).

    ``header`` (a Hub variant's RemoteHeader) means no file is here: llama.cpp's dry run runs on
    a sparse file built from the header bytes already read.
    """
    from fitchat.model.estimate import estimate
    from fitchat.model.measure import measure, measure_header

    isa = hw.cpu.isa or None
    cpu_est = estimate(plan.spec, plan.context, plan.settings, gpu_layers=0, cpu_isa=isa)
    if header is not None:
        meas = measure_header([(p.size_bytes, p.head) for p in header.parts], plan.context, plan.settings,
                              gpu_layers=plan.gpu_layers, label=plan.spec.file, moe_cpu_layers=plan.moe_cpu_layers)
        return plan, plan.estimate if plan.gpu_layers else cpu_est, meas
    if plan.gpu_layers and how != "load":
        # Simulate the planned offload without allocating VRAM.
        return plan, plan.estimate, measure(plan.spec.parts[0], plan.context, plan.settings, mode="dry_run",
                                            gpu_layers=plan.gpu_layers, moe_cpu_layers=plan.moe_cpu_layers)
    mode = {"load": "load", "dry": "dry_run"}.get(how)
    if mode is None:
        mode = "load" if cpu_est.total_bytes <= plan.ram_budget_bytes else "dry_run"
    return plan, cpu_est, measure(plan.spec.parts[0], plan.context, plan.settings, mode=mode)


# --------------------------------------------------------------------------- text output


def describe_hardware(hw: Any) -> str:
    """One line: the GPU(s) or why none, and the RAM."""
    if hw.backend == "cuda" and hw.gpus:
        gpus = "; ".join(f"{g.name} {human_bytes(g.free_bytes)} free of {human_bytes(g.total_bytes)}" for g in hw.gpus)
    elif hw.backend == "metal" and hw.metal is not None:
        gpus = f"Metal {human_bytes(hw.metal.working_set_bytes)} working set"
    else:
        gpus = f"no GPU in use ({hw.gpu_reason or 'CPU build'})"
    line = f"Machine:  {gpus}; RAM {human_bytes(hw.ram.available_bytes)} available"
    if hw.rpc:
        line += "\nWorkers:  " + "; ".join(
            f"{d.name} {human_bytes(d.free_bytes)} free of {human_bytes(d.total_bytes)}" for d in hw.rpc)
    return line


def describe_settings(ctx: int, s: Any) -> str:
    kv = s.type_k if s.type_k == s.type_v else f"{s.type_k}/{s.type_v}"
    return (
        f"Settings: context {ctx}, flash attention {'on' if s.flash_attn else 'off'}, KV cache {kv}, "
        f"n_batch {s.n_batch}, n_ubatch {s.n_ubatch}, SWA cache {'full' if s.swa_full else 'window'}"
    )


def render(plans: list[Any], hw: Any, ctx: int, settings: Any) -> str:
    """The readable table: one row per variant, then the recommendation, levers and notes."""
    from fitchat.model.plan import same_model, verdict_label

    mixed = any(not same_model(p.spec, plans[0].spec) for p in plans)
    rows = [("", "FILE" if mixed else "QUANT", "SIZE", "WEIGHTS", "KV CACHE", "COMPUTE", "TOTAL", "GPU", "FITS")]
    for p in plans:
        e = p.estimate
        rows.append((
            "*" if p.recommended else "",
            p.spec.file if mixed else p.spec.quant,
            human_bytes(p.spec.size_bytes),
            human_bytes(e.weights_bytes),
            human_bytes(e.kv_bytes),
            human_bytes(e.compute_bytes),
            human_bytes(e.total_bytes),
            human_bytes(e.gpu_bytes) if e.gpu_bytes else "-",
            verdict_label(p),
        ))
    lines = [describe_hardware(hw), describe_settings(ctx, settings)]
    if plans and plans[0].gpu_budget_bytes:
        lines.append(f"Margin:   {human_bytes(plans[0].margin_bytes)} kept free per "
                     + ("device" if hw.rpc else "GPU"))
    lines.append("")
    lines.extend(table_lines(rows, right=range(2, len(rows[0]) - 1)))
    lines.append("")
    best = next(p for p in plans if p.recommended)
    lines.append(f"Recommended: {best.reason}")
    for p in plans:
        label = p.spec.file if mixed else p.spec.quant
        if p.moe_cpu_layers:
            lines.append(f"  {label}: {moe_line(p)}")
        if hw.rpc or len(p.devices) > 2:
            lines.append(f"  {label}: split " + ", ".join(
                f"{d.name} {d.layers} layers ({human_bytes(d.bytes)})" for d in p.devices))
            if not p.recommended:
                lines.append(f"  {label}: {p.reason}")
        if p.levers:
            lines.append(f"  {label}: " + "; ".join(p.levers))
        for note in p.estimate.notes:
            lines.append(f"  {label}: note: {note}")
    if len(plans) == 1:
        lines.append(f"  {plans[0].spec.file}: {plans[0].spec.architecture}, {plans[0].spec.n_layers} blocks, "
                     f"{plans[0].spec.vocab_size:,} tokens vocabulary, trained context {plans[0].spec.n_ctx_train:,}"
                     + ("" if plans[0].spec.has_chat_template else "; no chat template in the file"))
    # File names, architectures, GPU names and notes come from outside: nothing of them reaches the terminal raw.
    return printable("\n".join(lines))


def moe_line(plan: Any) -> str:
    """The line a MoE plan with experts in RAM gets under the table, with the flag that loads it so."""
    layers = "all layers" if plan.gpu_layers >= plan.n_layers else f"{plan.gpu_layers} of {plan.n_layers} layers"
    return (f"{layers} on GPU, experts of {plan.moe_cpu_layers} of {plan.spec.n_layers} layers in RAM "
            f"(chat loads it so; by hand: --cpu-moe {plan.moe_cpu_layers})")


def render_measurement(plan: Any, est: Any, meas: Any) -> str:
    """Estimate and llama.cpp's reported buffers side by side."""
    from fitchat.model.measure import accuracy_failures

    how = "real CPU load" if meas.mode == "load" else (
        f"llama.cpp dry run (no_alloc), {meas.gpu_layers} layers offloaded"
        if meas.gpu_layers
        else "llama.cpp dry run (no_alloc)")
    if getattr(meas, "moe_cpu_layers", 0):
        how += f", experts of {meas.moe_cpu_layers} layers in RAM ({len(meas.overridden)} tensors overridden)"
    lines = [f"{plan.spec.quant} measured by {how} at context {meas.context} in {meas.seconds:.1f} s:",
             f"  {'':10} {'estimate':>12} {'llama.cpp':>12} {'diff':>11}"]

    def row(name: str, e: int, m: int | None) -> None:
        if m is None:
            lines.append(f"  {name:10} {human_bytes(e):>12} {'(not sized)':>12}")
        else:
            d = (e - m) / 1024**2
            lines.append(f"  {name:10} {human_bytes(e):>12} {human_bytes(m):>12} {d:>+8.2f} MiB")

    row("weights", est.weights_bytes, meas.weights_bytes)
    row("KV cache", est.kv_bytes, meas.kv_bytes)
    row("compute", est.compute_bytes, meas.compute_bytes)
    row("output", est.output_bytes, meas.output_bytes)
    total_m = meas.total_bytes if meas.weights_bytes is not None else None
    row("total", est.total_bytes, total_m)
    if meas.mode == "dry_run" and meas.weights_bytes is None:
        lines.append("  (a dry run allocates nothing, so llama.cpp does not size the weights; the file's tensors are exact)")
    devices = sorted({b.device for b in meas.buffers})
    if len(devices) > 1:
        for dev in devices:
            parts = ", ".join(f"{b.kind} {human_bytes(b.bytes)}" for b in meas.buffers if b.device == dev)
            lines.append(f"  {dev}: {parts}")
    failures = accuracy_failures(est, meas)
    lines.append("  within tolerance" if not failures else "  outside tolerance: " + "; ".join(failures))
    return printable("\n".join(lines))
