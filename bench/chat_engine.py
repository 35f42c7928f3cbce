"""Chat engine speed against its baselines, measured in one run.

    python bench/chat_engine.py [--model PATH] [--tokens 128] [--rounds 5] [--llama-tools DIR] [--json]

1. Decode throughput: fitchat's engine against bare llama-cpp-python on the same model, prompt,
   load settings and sampler (greedy, repeat penalty 1.1), in the same process, interleaved round
   by round. llama-cpp-python runs at its best thread count (each candidate is tried first) in two
   ways: ``create_chat_completion(stream=True)`` (what an application calls) and its lowest-level
   ``generate()`` loop with per-token detokenize. The engine runs with the threads it measured.
   The rate is (tokens - 1) / (last token time - first token time), seen by the consumer.
2. Against llama.cpp itself: ``llama-bench`` token generation (tg) with the same model, threads,
   flash attention, batch sizes and depth (the prompt length), interleaved with engine rounds.
   Needs llama-bench in ``--llama-tools`` (default /work/llama-tools/bin, or $LLAMA_TOOLS);
   skipped with a message when it is absent.
3. TTFT overhead: time to first token from a cold cache, engine against
   ``create_chat_completion``, same prompt and prompt-batch threads; and the engine's own time
   outside llama.cpp's prompt evaluation (template, tokenize, sampler set-up).

Timings on a shared machine are noisy: compare the ratios, which come from the same run.
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


def engine_decode(engine: Any, n: int) -> tuple[float, int]:
    from runner.engine import SamplingSettings

    settings = SamplingSettings(temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=n)
    times = []
    clock = time.perf_counter
    for _ in engine.stream(PROMPT, settings):
        times.append(clock())
    return rate(times), engine.last_stats.completion_tokens


def bare_chat_decode(llm: Any, n: int) -> tuple[float, int]:
    times = []
    clock = time.perf_counter
    chunks = llm.create_chat_completion(PROMPT, temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=n,
                                        stream=True)
    finish = None
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["delta"].get("content"):
            times.append(clock())
        finish = choice.get("finish_reason") or finish
    return rate(times), n if finish == "length" else len(times)


def bare_generate_decode(llm: Any, n: int) -> tuple[float, int]:
    tokens = llm.tokenize(render_prompt(llm).encode(), add_bos=False, special=True)
    times = []
    clock = time.perf_counter
    eos = llm.token_eos()
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=REPEAT_PENALTY, top_k=40, top_p=0.95):
        if token == eos:
            break
        llm.detokenize([token])
        times.append(clock())
        if len(times) >= n:
            break
    return rate(times), len(times)


def render_prompt(llm: Any) -> str:
    from llama_cpp import llama_chat_format

    fmt = llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    return fmt(messages=PROMPT).prompt


def load_bare(model: Path, kwargs: dict[str, Any], n_threads: int, n_threads_batch: int, n_ctx: int) -> Any:
    import llama_cpp
    from llama_cpp._logger import set_verbose

    with contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
                              verbose=True, **kwargs)
    set_verbose(False)
    llm.verbose = False  # keep generate()'s prefix-match lines off the report
    return llm


def llama_bench(tools: Path, model: Path, threads: int, n: int, depth: int, kwargs: dict[str, Any]) -> float:
    cmd = [
        str(tools / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n),
        "-d", str(depth), "-r", "1", "-o", "json", "-fa", "on" if kwargs.get("flash_attn") else "off",
        "-b", str(kwargs.get("n_batch", 512)), "-ub", str(kwargs.get("n_ubatch", 512)), "-ngl", "0",
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=str(tools) + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ttft_engine(engine: Any) -> tuple[float, float]:
    from runner.engine import SamplingSettings

    engine.reset()
    for _ in engine.stream(LONG_PROMPT, SamplingSettings(temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=1)):
        pass
    s = engine.last_stats
    evaluated = s.prompt_tokens - s.cached_tokens
    eval_s = evaluated / s.prompt_tokens_per_s if s.prompt_tokens_per_s else 0.0
    return s.ttft_s, s.ttft_s - eval_s


def ttft_bare(llm: Any) -> float:
    llm.reset()
    t0 = time.perf_counter()
    for chunk in llm.create_chat_completion(LONG_PROMPT, temperature=0.0, repeat_penalty=REPEAT_PENALTY, max_tokens=1,
                                            stream=True):
        if chunk["choices"][0]["delta"].get("content") is not None:
            return time.perf_counter() - t0
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF with a chat template (default: SmolLM2-135M Q8_0)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--llama-tools", type=Path,
                        default=Path(os.environ.get("LLAMA_TOOLS", "/work/llama-tools/bin")))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from runner.engine import ChatEngine
    from runner.threads import ThreadCache, candidates

    model = args.model or default_model()
    n = args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        engine = ChatEngine.load(model, n_ctx=args.ctx, thread_cache=ThreadCache(Path(tmp) / "threads.json"))
    kwargs = dict(engine.load_kwargs)
    threads = engine.threads
    import psutil

    counts = candidates(psutil.cpu_count(logical=False) or 1, psutil.cpu_count() or 1)

    # llama-cpp-python at its best thread count: two quick runs at each candidate.
    bare_by_threads = {}
    for t in counts:
        llm = load_bare(model, kwargs, t, threads.n_threads_batch, args.ctx)
        bare_by_threads[t] = max(bare_generate_decode(llm, n)[0] for _ in range(2))
        llm.close()
    bare_threads = max(bare_by_threads, key=bare_by_threads.get)
    llm = load_bare(model, kwargs, bare_threads, threads.n_threads_batch, args.ctx)

    engine_decode(engine, n)  # warm both up once
    bare_chat_decode(llm, n)
    rows: dict[str, list[float]] = {"engine": [], "bare_chat": [], "bare_generate": []}
    counts_seen: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn, target in (("engine", engine_decode, engine), ("bare_chat", bare_chat_decode, llm),
                                 ("bare_generate", bare_generate_decode, llm)):
            r, produced = fn(target, n)
            rows[name].append(r)
            counts_seen[name] = produced
    med = {k: statistics.median(v) for k, v in rows.items()}
    best_bare = max(med["bare_chat"], med["bare_generate"])

    # TTFT from a cold cache, same prompt-batch threads.
    ttft_rows: dict[str, list[float]] = {"engine": [], "engine_outside_eval": [], "bare_chat": []}
    for _ in range(args.rounds):
        t, outside = ttft_engine(engine)
        ttft_rows["engine"].append(t)
        ttft_rows["engine_outside_eval"].append(outside)
        ttft_rows["bare_chat"].append(ttft_bare(llm))
    ttft = {k: statistics.median(v) for k, v in ttft_rows.items()}
    prompt_tokens = engine.count_tokens(LONG_PROMPT)
    llm.close()

    # llama.cpp's own llama-bench, same threads and depth, interleaved with engine rounds.
    bench: dict[str, Any] | None = None
    tool = args.llama_tools / "llama-bench"
    skipped = None
    if tool.is_file():
        depth = engine.count_tokens(PROMPT)
        eng_rates, lb_rates = [], []
        for _ in range(args.rounds):
            eng_rates.append(engine_decode(engine, n)[0])
            lb_rates.append(llama_bench(args.llama_tools, model, engine.threads.n_threads, n, depth, kwargs))
        bench = {"llama_bench_tg": statistics.median(lb_rates), "engine": statistics.median(eng_rates),
                 "depth": depth, "threads": engine.threads.n_threads}
        bench["ratio"] = bench["engine"] / bench["llama_bench_tg"]
    else:
        skipped = f"llama-bench not found in {args.llama_tools}: build it from the sdist's vendored llama.cpp"
    engine.close()

    result = {
        "model": str(model),
        "tokens": n,
        "rounds": args.rounds,
        "load_kwargs": kwargs,
        "engine_threads": {"n_threads": threads.n_threads, "n_threads_batch": threads.n_threads_batch,
                           "measured": threads.decode_measured},
        "bare_threads": bare_threads,
        "bare_by_threads": bare_by_threads,
        "decode_tokens_per_s": med,
        "decode_ratio_vs_best_bare": med["engine"] / best_bare,
        "decode_ratio_vs_bare_chat": med["engine"] / med["bare_chat"],
        "tokens_produced": counts_seen,
        "ttft_s": ttft,
        "ttft_prompt_tokens": prompt_tokens,
        "ttft_ratio": ttft["engine"] / ttft["bare_chat"],
        "llama_bench": bench,
        "llama_bench_skipped": skipped,
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {model.name}, {n} tokens, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"engine threads {threads.n_threads}/{threads.n_threads_batch} (measured {threads.decode_measured}); "
          f"llama-cpp-python best threads {bare_threads} ({ {k: round(v) for k, v in bare_by_threads.items()} })")
    print("decode tok/s (median):")
    for k in ("engine", "bare_chat", "bare_generate"):
        print(f"  {k:<14} {med[k]:8.1f}")
    print(f"  engine / best bare llama-cpp-python = {result['decode_ratio_vs_best_bare']:.3f}  "
          f"(/ create_chat_completion = {result['decode_ratio_vs_bare_chat']:.3f})")
    if bench:
        print(f"  llama-bench tg{n} at depth {bench['depth']}: {bench['llama_bench_tg']:.1f}, engine {bench['engine']:.1f}"
              f" -> engine / llama-bench = {bench['ratio']:.3f}")
    else:
        print(f"  {skipped}")
    print(f"TTFT, cold cache, {prompt_tokens} prompt tokens (median): engine {ttft['engine'] * 1000:.1f} ms, "
          f"create_chat_completion {ttft['bare_chat'] * 1000:.1f} ms -> ratio {result['ttft_ratio']:.3f}; "
          f"engine time outside prompt evaluation {ttft['engine_outside_eval'] * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
