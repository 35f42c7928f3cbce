"""How close fitchat's memory estimate is to what llama.cpp reports it allocates.

    python bench/estimate_accuracy.py [--ctx 512 2048 8192] [--no-flash-attn] [--json]
    python bench/estimate_accuracy.py --matrix [--quick] [--real]

Loads SmolLM2-135M (Q4_1 from PyPI; Q8_0, Q5_K_M, Q4_K_M made from it) and gemma-3-270m Q4_K_M
(262k vocabulary, sliding-window attention) on the CPU, each in a child process, with the settings
``fitchat chat`` uses, and reads llama.cpp's buffer lines (model, KV, compute, output). Prints the
estimate beside each figure and checks the tolerances: every part within max(2 %, 16 MiB), the
total within max(3 %, 32 MiB). As a baseline in the same run it also shows the error of the
common flat-overhead rule (weights + KV cache + 0.5 GiB) that other tools use.

``--matrix`` instead runs the architecture matrix of ``tests/arch_factory.py``: every scaled-down
architecture loaded by llama.cpp at 2k, 8k and 32k, flash attention on and off, ``swa_full`` on and off,
f16 and q8_0 caches (``--quick``: the two settings the default test run uses), plus with ``--real`` llama.cpp's
dry runs of the real-scale headers (sparse files; weights from the header). It prints the worst row per
architecture: the largest part error (KV, RS, compute, output, weights) and the total error, beside the
flat-overhead rule's total error.

Exit status 0 when every row is within tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fitchat.model.estimate import DEFAULT_SETTINGS, estimate  # noqa: E402
from fitchat.model.gguf_spec import read_spec  # noqa: E402
from fitchat.model.hardware import parse_isa, probe_llama_build  # noqa: E402
from fitchat.model.measure import PART_TOLERANCE, TOTAL_TOLERANCE, measure_many, within  # noqa: E402
from tests import models  # noqa: E402

MiB = 1024 * 1024
FLAT_OVERHEAD = 512 * MiB


def model_paths() -> dict[str, Path]:
    paths = {f"SmolLM2-135M {q}": models.smollm2_variant(q) for q in ("Q4_1", "Q8_0", "Q5_K_M", "Q4_K_M")}
    paths["gemma-3-270m Q4_K_M"] = models.gemma3_270m()
    return paths


def matrix(quick: bool, real: bool, isa: tuple[str, ...] | None) -> int:
    """The worst row per architecture of the matrix (see the module docstring)."""
    import tempfile

    from tests import arch_factory

    grid = arch_factory.settings_grid()
    quick_grid = [(8192, dataclasses.replace(DEFAULT_SETTINGS, swa_full=False, type_k="q8_0", type_v="q8_0")),
                  (32768, dataclasses.replace(DEFAULT_SETTINGS, flash_attn=False))]
    cases: list[tuple[str, str, object]] = [(n, "load", arch_factory.small_model) for n in arch_factory.SMALL]
    if real:
        cases += [(n, "dry_run", arch_factory.real_scale) for n in arch_factory.REAL]
    print("worst row per architecture (llama.cpp CPU loads; real-scale: dry runs); MiB estimate / measured")
    head = f"{'model':18} {'mode':7} {'worst part':>38}  {'total err':>9}  {'flat rule err':>13}  {'rows ok':>8}"
    print(head)
    print("-" * len(head))
    all_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode, make in cases:
            path = make(name, Path(tmp))  # type: ignore[operator]
            spec = read_spec(path)
            jobs = [j for j in (quick_grid if quick else grid) if arch_factory.loadable(spec, j[1])]
            if mode == "dry_run":
                jobs = [j for j in jobs if j[0] >= 8192]
            worst_part, worst_total, worst_flat, n_ok = (0.0, "", 0, 0), 0.0, 0.0, 0
            for m in measure_many(path, jobs, mode=mode, timeout=600):
                e = estimate(spec, m.context, m.settings, cpu_isa=isa)
                parts = arch_factory.parts(e, m)
                if "weights" not in parts:
                    # A dry run logs no weights: take the header's tensor bytes plus the CPU's repacked copies
                    # (checked on real loads of the small models), so the total is comparable.
                    w = sum(t.n_bytes for t in spec.tensors) + e.repack_bytes
                    parts["weights"] = (e.weights_bytes, w)
                    parts["total"] = (sum(v[0] for k, v in parts.items() if k != "weights") + e.weights_bytes,
                                      m.total_bytes + w)
                ok = all(within(ev, mv, TOTAL_TOLERANCE if k == "total" else PART_TOLERANCE) for k, (ev, mv) in parts.items())
                n_ok += ok
                for k, (ev, mv) in parts.items():
                    # worst = the largest share of the allowed error, max(2 %, 16 MiB)
                    share = abs(ev - mv) / max(PART_TOLERANCE[0] * mv, PART_TOLERANCE[1])
                    if k != "total" and share >= worst_part[0]:
                        worst_part = (share, k, ev, mv)
                e_t, m_t = parts["total"]
                worst_total = max(worst_total, abs(e_t - m_t) / m_t)
                flat = spec.size_bytes + e.kv_bytes + FLAT_OVERHEAD
                worst_flat = max(worst_flat, abs(flat - m_t) / m_t)
            all_ok &= n_ok == len(jobs)
            _, part, ev, mv = worst_part
            rel = (ev - mv) / mv if mv else 0.0
            cell = f"{part} {ev / MiB:.1f}/{mv / MiB:.1f} ({rel * 100:+.1f}%)" if part else "-"
            print(f"{name:18} {mode:7} {cell:>38}  {worst_total * 100:8.2f}%  {worst_flat * 100:12.0f}%  "
                  f"{n_ok:>3}/{len(jobs):<4}", flush=True)
            path.unlink()
    return 0 if all_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--no-flash-attn", action="store_true", help="measure with flash attention off")
    parser.add_argument("--swa-window", action="store_true", help="window-sized SWA cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--matrix", action="store_true", help="the architecture matrix, worst row per architecture")
    parser.add_argument("--quick", action="store_true", help="with --matrix: two settings per model")
    parser.add_argument("--real", action="store_true", help="with --matrix: the real-scale headers too (dry runs)")
    args = parser.parse_args()
    if args.matrix:
        return matrix(args.quick, args.real, parse_isa(probe_llama_build().system_info))
    settings = dataclasses.replace(DEFAULT_SETTINGS, flash_attn=not args.no_flash_attn, swa_full=not args.swa_window)
    isa = parse_isa(probe_llama_build().system_info)

    rows = []
    for name, path in model_paths().items():
        spec = read_spec(path)
        for m in measure_many(path, [(c, settings) for c in args.ctx]):
            e = estimate(spec, m.context, settings, cpu_isa=isa)
            flat = spec.size_bytes + e.kv_bytes + FLAT_OVERHEAD
            ok = (
                within(e.weights_bytes, m.weights_bytes, PART_TOLERANCE)
                and within(e.kv_bytes, m.kv_bytes, PART_TOLERANCE)
                and within(e.compute_bytes, m.compute_bytes, PART_TOLERANCE)
                and within(e.total_bytes, m.total_bytes, TOTAL_TOLERANCE)
            )
            rows.append({
                "model": name, "ctx": m.context,
                "weights": (e.weights_bytes, m.weights_bytes), "kv": (e.kv_bytes, m.kv_bytes),
                "compute": (e.compute_bytes, m.compute_bytes), "total": (e.total_bytes, m.total_bytes),
                "flat_total": flat, "ok": ok, "load_s": round(m.seconds, 2),
            })

    if args.json:
        print(json.dumps({"settings": settings.to_json(), "rows": rows}, indent=2))
        return 0 if all(r["ok"] for r in rows) else 1

    s = settings
    print(f"llama.cpp CPU loads; flash attention {'on' if s.flash_attn else 'off'}, KV {s.type_k}, n_ubatch {s.n_ubatch}, "
          f"SWA cache {'full' if s.swa_full else 'window'}; MiB, estimate / measured (difference)")
    head = (f"{'model':22} {'ctx':>5}  {'weights':>22}  {'KV cache':>22}  {'compute':>22}  {'total':>22}  "
            f"{'flat rule err':>13}  ok")
    print(head)
    print("-" * len(head))

    def cell(pair: tuple[int, int]) -> str:
        e, m = pair
        return f"{e / MiB:7.2f}/{m / MiB:7.2f} ({(e - m) / MiB:+5.2f})"

    worst = {"weights": 0.0, "kv": 0.0, "compute": 0.0, "total": 0.0}
    flat_errors = []
    for r in rows:
        for k in worst:
            e, m = r[k]
            worst[k] = max(worst[k], abs(e - m) / MiB)
        m_total = r["total"][1]
        flat_err = (r["flat_total"] - m_total) / m_total
        flat_errors.append(abs(flat_err))
        print(f"{r['model']:22} {r['ctx']:>5}  {cell(r['weights'])}  {cell(r['kv'])}  {cell(r['compute'])}  {cell(r['total'])}"
              f"  {flat_err * 100:+12.0f}%  {'yes' if r['ok'] else 'NO'}")
    rel = max(abs(r["total"][0] - r["total"][1]) / r["total"][1] for r in rows)
    print()
    print("worst difference (MiB): " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    print(f"worst total error: fitchat {rel * 100:.2f}%, flat weights+KV+0.5 GiB rule {max(flat_errors) * 100:.0f}%")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} rows within tolerance (parts max(2%, 16 MiB), total max(3%, 32 MiB))")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
