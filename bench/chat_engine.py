"""Chat engine speed against its baselines, measured in one run.

    python bench/chat_engine.py [--model PATH] [--tokens 128] [--rounds 5] [--llama-bench PATH] [--json]

1. Decode throughput: fitchat's engine against bare llama-cpp-python on the same model, prompt,
   load settings and sampler (greedy, repeat penalty 1.1), in the same process. llama-cpp-python
   runs at its best thread count (the candidates are tried first) in two ways:
   ``create_chat_completion(stream=True)`` (what an application calls) and its lowest-level
   ``generate()`` loop with per-token detokenize; the engine runs with the threads it measured.
   The three replies are generated together, one token from each in turn, and each pull is timed:
   every path sees the same moments of the machine's load. The first token (the prompt) is not
   counted. The ratio is the median over rounds of the per-round ratios.
   A fourth stream, interleaved with them, is llama.cpp alone as llama-bench's tg test drives it
   (one ``llama_decode`` per token, no sampling, the engine's threads): the engine's ratio to it
   is the per-token cost of everything fitchat adds, sampling included.
2. Against llama.cpp itself: ``llama-bench`` token generation (tg) with the same model, threads,
   flash attention, batch sizes and depth (the prompt length); each llama-bench run sits between
   two engine runs, and the ratio is the median of per-round ratios. llama-bench is ``--llama-bench``,
   else found or built as the tests find and build llama.cpp's tools (``tests.models.llama_tool``:
   $LLAMA_BENCH, the PATH, or built once into the test models' cache); skipped with a message when
   it cannot be built.
3. TTFT overhead: time to first token from a cold cache, engine against
   ``create_chat_completion``, same prompt and prompt-batch threads; and the engine's own time
   outside llama.cpp's prompt evaluation (template, tokenize, sampler set-up).

4. Through the engine process (fitchat.llama.process, what the TUI and ``fitchat chat`` use): decode
   and cold TTFT as the consumer sees them, against bare llama-cpp-python. The process decodes on
   its own while this one waits, so its tokens cannot be interleaved one by one with the others:
   each round runs the process engine, ``create_chat_completion`` and ``generate()`` one after the
   other (alone on the machine), and the ratio is the median of per-round ratios against the
   faster of the two. CPU time for the process engine is both processes'.

Timings on a shared machine are noisy: compare the ratios, which come from the same run. Beside
wall-clock figures the report gives this process's CPU time per token (or to the first token),
which other programs' load does not inflate.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]
LONG_PROMPT = [{"role": "user", "content": "The history of bread spans many cultures and centuries. " * 40
                + "\nSummarise this in one sentence."}]
REPEAT_PENALTY = 1.1


def default_model() -> Path:
    from tests.models import smollm2_variant

    return smollm2_variant("Q8_0")


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0




def engine_tokens(engine: Any, n: int) -> Iterator[None]:
    from fitchat.llama.engine import SamplingSettings

    for _ in engine.stream(PROMPT, SamplingSettings(temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=n)):
        yield None


def bare_chat_tokens(llm: Any, n: int) -> Iterator[None]:
    for chunk in llm.create_chat_completion(PROMPT, temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=n,
                                            stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            yield None


def bare_generate_tokens(llm: Any, n: int) -> Iterator[None]:
    tokens = llm.tokenize(render_prompt(llm).encode(), add_bos=False, special=True)
    eos = llm.token_eos()
    produced = 0
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=REPEAT_PENALTY, top_k=40, top_p=0.95):
        if token == eos:
            return
        llm.detokenize([token])
        yield None
        produced += 1
        if produced >= n:
            return


def raw_decode_tokens(llm: Any, n: int) -> Iterator[None]:
    """llama.cpp alone, as llama-bench's tg test runs it: one llama_decode per token, no sampling."""
    import llama_cpp as lc

    tokens = llm.tokenize(render_prompt(llm).encode(), add_bos=False, special=True)
    mem = lc.llama_get_memory(llm.ctx)
    lc.llama_memory_clear(mem, True)
    arr = (lc.llama_token * len(tokens))(*tokens)
    lc.llama_decode(llm.ctx, lc.llama_batch_get_one(arr, len(tokens)))
    yield None
    one = (lc.llama_token * 1)(tokens[-1])
    batch = lc.llama_batch_get_one(one, 1)
    decode, ctx = lc.llama_decode, llm.ctx
    for _ in range(n - 1):
        decode(ctx, batch)
        yield None


def interleaved_decode(streams: dict[str, Iterator[None]]) -> dict[str, tuple[float, float, int]]:
    """Pull one token from each stream in turn, timing each pull; the first token (prompt) is not timed.

    Every path sees the same moments of the machine's load, so their ratio survives a busy machine.
    Returns, per path, (tokens per second of wall time, CPU milliseconds per token, tokens timed).
    """
    wall = dict.fromkeys(streams, 0.0)
    cpu = dict.fromkeys(streams, 0.0)
    timed = dict.fromkeys(streams, 0)
    live = dict(streams)
    for it in live.values():
        next(it, None)
    while live:
        for name in list(live):
            t0, c0 = time.perf_counter(), time.process_time()
            got = next(live[name], StopIteration)
            t1, c1 = time.perf_counter(), time.process_time()
            if got is StopIteration:
                del live[name]
                continue
            wall[name] += t1 - t0
            cpu[name] += c1 - c0
            timed[name] += 1
    return {k: (timed[k] / wall[k] if wall[k] else 0.0, cpu[k] * 1000 / timed[k] if timed[k] else 0.0, timed[k])
            for k in streams}


def engine_decode(engine: Any, n: int) -> float:
    """The engine alone: tokens per second after the first, seen by the consumer."""
    times = []
    for _ in engine_tokens(engine, n):
        times.append(time.perf_counter())
    return rate(times)


def render_prompt(llm: Any) -> str:
    from llama_cpp import llama_chat_format

    fmt = llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    return fmt(messages=PROMPT).prompt


def llama_cpp_threads(llm: Any, n_threads: int, n_threads_batch: int) -> None:
    import llama_cpp

    llama_cpp.llama_set_n_threads(llm.ctx, n_threads, n_threads_batch)


def load_bare(model: Path, kwargs: dict[str, Any], n_threads: int, n_threads_batch: int, n_ctx: int) -> Any:
    import llama_cpp
    from llama_cpp._logger import set_verbose

    with contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
                              verbose=True, **kwargs)
    set_verbose(False)
    llm.verbose = False  # keep generate()'s prefix-match lines off the report
    return llm


def find_llama_bench(given: Path | None) -> tuple[Path | None, str | None]:
    """(llama-bench, None), or (None, why not): the path given, else the one the tests find or build."""
    if given is not None:
        return (given, None) if given.is_file() else (None, f"llama-bench not found at {given}")
    from tests.models import llama_tool

    try:
        return llama_tool("llama-bench"), None
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"llama-bench could not be built from the llama-cpp-python sdist: {exc}"


def llama_bench(tool: Path, model: Path, threads: int, n: int, depth: int, kwargs: dict[str, Any]) -> float:
    cmd = [
        str(tool), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n),
        "-d", str(depth), "-r", "1", "-o", "json", "-fa", "on" if kwargs.get("flash_attn") else "off",
        "-b", str(kwargs.get("n_batch", 512)), "-ub", str(kwargs.get("n_ubatch", 512)), "-ngl", "0",
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=str(tool.parent) + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ttft_engine(engine: Any) -> tuple[float, float, float]:
    """(TTFT, time outside llama.cpp's prompt evaluation, process CPU seconds to the first token)."""
    from fitchat.llama.engine import SamplingSettings

    engine.reset()
    cpu = 0.0
    c0 = time.process_time()
    for _ in engine.stream(LONG_PROMPT, SamplingSettings(temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=1)):
        cpu = time.process_time() - c0
    s = engine.last_stats
    evaluated = s.prompt_tokens - s.cached_tokens
    eval_s = evaluated / s.prompt_tokens_per_s if s.prompt_tokens_per_s else 0.0
    return s.ttft_s, s.ttft_s - eval_s, cpu


def ttft_bare(llm: Any) -> tuple[float, float]:
    """(TTFT, process CPU seconds to the first token) through create_chat_completion, cold cache."""
    llm.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    for chunk in llm.create_chat_completion(LONG_PROMPT, temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=1,
                                            stream=True):
        if chunk["choices"][0]["delta"].get("content") is not None:
            break
    return time.perf_counter() - t0, time.process_time() - c0


def process_decode(engine: Any, n: int) -> tuple[float, float]:
    """The engine process as its consumer sees it: (tokens/s after the first, CPU ms per token of both processes)."""
    import psutil

    child = psutil.Process(engine.pid)
    first = last = 0.0
    c0, k0 = time.process_time(), sum(child.cpu_times()[:2])
    for _ in engine_tokens(engine, n):
        last = time.perf_counter()
        first = first or last
    cpu = time.process_time() - c0 + sum(child.cpu_times()[:2]) - k0
    tokens = engine.last_stats.completion_tokens
    return ((tokens - 1) / (last - first) if last > first else 0.0), cpu * 1000 / max(1, tokens)


def alone_decode(tokens: Iterator[None]) -> tuple[float, float]:
    """One path alone: (tokens/s after the first, CPU ms per token)."""
    times: list[float] = []
    c0 = time.process_time()
    for _ in tokens:
        times.append(time.perf_counter())
    return rate(times), (time.process_time() - c0) * 1000 / max(1, len(times))


def ttft_process(engine: Any) -> tuple[float, float]:
    """(TTFT seen by the consumer, CPU seconds of both processes to the first token), cold cache."""
    import psutil

    from fitchat.llama.engine import SamplingSettings

    engine.reset()
    child = psutil.Process(engine.pid)
    t0, c0, k0 = time.perf_counter(), time.process_time(), sum(child.cpu_times()[:2])
    t = cpu = 0.0
    for _ in engine.stream(LONG_PROMPT, SamplingSettings(temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=1)):
        t = time.perf_counter() - t0
        cpu = time.process_time() - c0 + sum(child.cpu_times()[:2]) - k0
    return t, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF with a chat template (default: SmolLM2-135M Q8_0)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--llama-bench", type=Path,
                        help="llama.cpp's llama-bench (default: $LLAMA_BENCH, the PATH, or built as the tests build it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tool, skipped = find_llama_bench(args.llama_bench)  # before any timing: building it takes minutes

    from fitchat.llama.engine import ChatEngine
    from fitchat.llama.threads import ThreadCache, candidates

    model = args.model or default_model()
    n = args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        engine = ChatEngine.load(model, n_ctx=args.ctx, thread_cache=ThreadCache(Path(tmp) / "threads.json"))
    kwargs = dict(engine.load_kwargs)
    threads = engine.threads
    import psutil

    counts = candidates(psutil.cpu_count(logical=False) or 1, psutil.cpu_count() or 1)

    # llama-cpp-python at its best thread count: the candidates interleaved, best of two runs.
    bare_by_threads: dict[int, float] = dict.fromkeys(counts, 0.0)
    trials = {t: load_bare(model, kwargs, t, threads.n_threads_batch, args.ctx) for t in counts}
    for _ in range(2):
        got = interleaved_decode({str(t): bare_generate_tokens(m, n // 2) for t, m in trials.items()})
        for t in counts:
            bare_by_threads[t] = max(bare_by_threads[t], got[str(t)][0])
    for m in trials.values():
        m.close()
    bare_threads = max(bare_by_threads, key=lambda t: bare_by_threads[t])
    llm = load_bare(model, kwargs, bare_threads, threads.n_threads_batch, args.ctx)
    llm_gen = load_bare(model, kwargs, bare_threads, threads.n_threads_batch, args.ctx)
    llm_raw = load_bare(model, kwargs, threads.n_threads, threads.n_threads_batch, args.ctx)

    rows: dict[str, list[float]] = {"engine": [], "bare_chat": [], "bare_generate": [], "raw_decode": []}
    cpu_rows: dict[str, list[float]] = {k: [] for k in rows}
    ratio_rows: dict[str, list[float]] = {"bare_chat": [], "bare_generate": [], "raw_decode": []}
    counts_seen: dict[str, int] = {}
    for i in range(args.rounds + 1):  # the first round warms up and is not counted
        llama_cpp_threads(llm_raw, engine.threads.n_threads, engine.threads.n_threads_batch)
        got = interleaved_decode({"engine": engine_tokens(engine, n), "bare_chat": bare_chat_tokens(llm, n),
                                  "bare_generate": bare_generate_tokens(llm_gen, n),
                                  "raw_decode": raw_decode_tokens(llm_raw, n)})
        if i == 0:
            continue
        for name, (r, cpu_ms, timed) in got.items():
            rows[name].append(r)
            cpu_rows[name].append(cpu_ms)
            counts_seen[name] = timed + 1
        for name in ratio_rows:
            ratio_rows[name].append(got["engine"][0] / got[name][0])
    llm_gen.close()
    llm_raw.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_rows.items()}
    ratios = {k: statistics.median(v) for k, v in ratio_rows.items()}

    # TTFT from a cold cache, same prompt-batch threads.
    ttft_rows: dict[str, list[float]] = {"engine": [], "engine_outside_eval": [], "bare_chat": [],
                                         "engine_cpu": [], "bare_chat_cpu": []}
    for _ in range(args.rounds):
        t, outside, cpu = ttft_engine(engine)
        ttft_rows["engine"].append(t)
        ttft_rows["engine_outside_eval"].append(outside)
        ttft_rows["engine_cpu"].append(cpu)
        t, cpu = ttft_bare(llm)
        ttft_rows["bare_chat"].append(t)
        ttft_rows["bare_chat_cpu"].append(cpu)
    ttft = {k: statistics.median(v) for k, v in ttft_rows.items()}
    ttft_ratio = statistics.median(e / b for e, b in zip(ttft_rows["engine"], ttft_rows["bare_chat"], strict=True))
    ttft_cpu_ratio = statistics.median(e / b for e, b in zip(ttft_rows["engine_cpu"], ttft_rows["bare_chat_cpu"], strict=True))
    prompt_tokens = engine.count_tokens(LONG_PROMPT)
    llm.close()

    # llama.cpp's own llama-bench, same threads and depth, interleaved with engine rounds.
    bench: dict[str, Any] | None = None
    if tool is not None:
        depth = engine.count_tokens(PROMPT)
        eng_rates, lb_rates, lb_ratios = [], [], []
        for _ in range(args.rounds):
            before = engine_decode(engine, n)
            lb = llama_bench(tool, model, engine.threads.n_threads, n, depth, kwargs)
            after = engine_decode(engine, n)
            eng_rates += [before, after]
            lb_rates.append(lb)
            lb_ratios.append((before + after) / 2 / lb)  # the engine on both sides of each llama-bench run
        bench = {"llama_bench_tg": statistics.median(lb_rates), "engine": statistics.median(eng_rates),
                 "depth": depth, "threads": engine.threads.n_threads, "ratio": statistics.median(lb_ratios)}
    threads_end = engine.threads
    notices = list(engine.notices)
    engine.close()

    # The engine process (what the TUI and `fitchat chat` use), with the threads the engine measured.
    from fitchat.llama.process import ProcessEngine

    proc = ProcessEngine.load(model, n_ctx=args.ctx, n_threads=threads.n_threads, n_threads_batch=threads.n_threads_batch)
    llm = load_bare(model, kwargs, bare_threads, threads.n_threads_batch, args.ctx)
    llm_gen = load_bare(model, kwargs, bare_threads, threads.n_threads_batch, args.ctx)
    proc_rows: dict[str, list[float]] = {"process": [], "bare_chat": [], "bare_generate": [], "ratio": [],
                                         "process_cpu": [], "bare_chat_cpu": [], "bare_generate_cpu": []}
    for i in range(args.rounds + 1):
        p_rate, p_cpu = process_decode(proc, n)
        c_rate, c_cpu = alone_decode(bare_chat_tokens(llm, n))
        g_rate, g_cpu = alone_decode(bare_generate_tokens(llm_gen, n))
        if i == 0:
            continue
        for key, value in (("process", p_rate), ("bare_chat", c_rate), ("bare_generate", g_rate),
                           ("process_cpu", p_cpu), ("bare_chat_cpu", c_cpu), ("bare_generate_cpu", g_cpu)):
            proc_rows[key].append(value)
        proc_rows["ratio"].append(p_rate / max(c_rate, g_rate))
    proc_ttft: dict[str, list[float]] = {"process": [], "bare_chat": [], "process_cpu": [], "bare_chat_cpu": []}
    for _ in range(args.rounds):
        t, cpu = ttft_process(proc)
        proc_ttft["process"].append(t)
        proc_ttft["process_cpu"].append(cpu)
        t, cpu = ttft_bare(llm)
        proc_ttft["bare_chat"].append(t)
        proc_ttft["bare_chat_cpu"].append(cpu)
    proc.close()
    llm.close()
    llm_gen.close()
    process = {
        "decode_tokens_per_s": {k: statistics.median(proc_rows[k]) for k in ("process", "bare_chat", "bare_generate")},
        "decode_cpu_ms_per_token": {k: statistics.median(proc_rows[k + "_cpu"])
                                    for k in ("process", "bare_chat", "bare_generate")},
        "decode_ratio_vs_best_bare": statistics.median(proc_rows["ratio"]),
        "ttft_s": {k: statistics.median(v) for k, v in proc_ttft.items()},
        "ttft_ratio": statistics.median(p / b for p, b in zip(proc_ttft["process"], proc_ttft["bare_chat"])),
        "ttft_cpu_ratio": statistics.median(p / b for p, b in zip(proc_ttft["process_cpu"], proc_ttft["bare_chat_cpu"])),
    }

    result = {
        "model": str(model),
        "tokens": n,
        "rounds": args.rounds,
        "load_kwargs": kwargs,
        "engine_threads": {"n_threads": threads.n_threads, "n_threads_batch": threads.n_threads_batch,
                           "measured": threads.decode_measured},
        "engine_threads_at_end": {"n_threads": threads_end.n_threads, "n_threads_batch": threads_end.n_threads_batch},
        "engine_notices": notices,
        "bare_threads": bare_threads,
        "bare_by_threads": bare_by_threads,
        "decode_tokens_per_s": med,
        "decode_cpu_ms_per_token": cpu_med,
        "decode_ratio_vs_bare_chat": ratios["bare_chat"],
        "decode_ratio_vs_bare_generate": ratios["bare_generate"],
        "decode_ratio_vs_best_bare": min(ratios["bare_chat"], ratios["bare_generate"]),
        "decode_ratio_vs_raw_llama_decode": ratios["raw_decode"],
        "tokens_produced": counts_seen,
        "ttft_s": ttft,
        "ttft_prompt_tokens": prompt_tokens,
        "ttft_ratio": ttft_ratio,
        "ttft_cpu_ratio": ttft_cpu_ratio,
        "llama_bench": bench,
        "llama_bench_skipped": skipped,
        "engine_process": process,
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {model.name}, {n} tokens, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"engine threads {threads.n_threads}/{threads.n_threads_batch} (measured {threads.decode_measured}); "
          f"llama-cpp-python best threads {bare_threads} ({ {k: round(v) for k, v in bare_by_threads.items()} }); "
          f"engine threads at the end {threads_end.n_threads}/{threads_end.n_threads_batch}")
    for notice in notices:
        print(f"  engine notice: {notice}")
    print("decode tok/s (median):")
    for k in ("engine", "bare_chat", "bare_generate", "raw_decode"):
        print(f"  {k:<14} {med[k]:8.1f}   ({cpu_med[k]:.2f} ms CPU per token)")
    print(f"  engine / create_chat_completion = {ratios['bare_chat']:.3f}, engine / generate() = "
          f"{ratios['bare_generate']:.3f} (medians of per-round ratios; tokens interleaved one by one)")
    print(f"  engine / llama.cpp's own decode loop (llama_decode per token, no sampling, same threads "
          f"as the engine, interleaved) = {ratios['raw_decode']:.3f}")
    if bench:
        print(f"  llama-bench tg{n} at depth {bench['depth']}, {bench['threads']} threads: "
              f"{bench['llama_bench_tg']:.1f}, engine {bench['engine']:.1f} -> engine / llama-bench = {bench['ratio']:.3f}")
    else:
        print(f"  {skipped}")
    print(f"TTFT, cold cache, {prompt_tokens} prompt tokens (median): engine {ttft['engine'] * 1000:.1f} ms, "
          f"create_chat_completion {ttft['bare_chat'] * 1000:.1f} ms -> ratio {result['ttft_ratio']:.3f} "
          f"(CPU time ratio {result['ttft_cpu_ratio']:.3f}); "
          f"engine time outside prompt evaluation {ttft['engine_outside_eval'] * 1000:.2f} ms")
    pd, pc, pt = process["decode_tokens_per_s"], process["decode_cpu_ms_per_token"], process["ttft_s"]
    print("through the engine process (runs one after another, medians):")
    for k in ("process", "bare_chat", "bare_generate"):
        print(f"  {k:<14} {pd[k]:8.1f} tok/s   ({pc[k]:.2f} ms CPU per token)")
    print(f"  engine process / best bare llama-cpp-python = {process['decode_ratio_vs_best_bare']:.3f}")
    print(f"  TTFT, cold cache: engine process {pt['process'] * 1000:.1f} ms, create_chat_completion "
          f"{pt['bare_chat'] * 1000:.1f} ms -> ratio {process['ttft_ratio']:.3f} "
          f"(CPU time of both processes, ratio {process['ttft_cpu_ratio']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
