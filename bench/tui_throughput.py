"""Streaming throughput with the UI against the engine alone, in the same run.

    python bench/tui_throughput.py [--model PATH] [--tokens 256] [--rounds 3] [--threads 1]

Each round runs the same greedy reply twice, alternating: once straight from ``ChatEngine.stream``
(no UI), once through the chat screen of the app (headless Textual, 120x40: the compositor
renders every frame, only the terminal write is skipped). It reports the engine's decode tok/s in
both cases (does the UI slow generation?) and the UI's own rate: tokens shown per second from the
first token on screen to the last one rendered.

Then the UI's ceiling: the recorded tokens of that reply replayed into the chat screen as fast as
a thread can post them, and again paced at 300 tok/s (is the screen still current when the last
token arrives?).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Write a detailed essay about the history of the printing press, with headings and a list."


def default_model() -> Path:
    from tests.models import smollm2_q4_1

    return smollm2_q4_1()


def private_home() -> None:
    home = Path(tempfile.mkdtemp(prefix="fitchat-bench-"))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        (home / var).mkdir()
        os.environ[var] = str(home / var)
    os.environ["HF_HUB_OFFLINE"] = "1"


def engine_alone(path: Path, settings, threads: int) -> tuple[float, list[str]]:
    """Decode tok/s of the bare engine, and the pieces it produced."""
    from runner.engine import ChatEngine

    engine = ChatEngine.load(path, n_ctx=4096, n_threads=threads)
    try:
        pieces = list(engine.stream([{"role": "user", "content": PROMPT}], settings))
        return engine.last_stats.decode_tokens_per_s, pieces
    finally:
        engine.close()


def local_model(path: Path):
    from runner.store import LocalModel

    return LocalModel(repo="bench/" + path.stem, file=path.name, quant="bench", size_bytes=path.stat().st_size,
                      path=path, sha256=None, source="imported")


async def _chat_screen(app, path: Path):
    from tui.screens.chat import ChatScreen

    app.open_chat(local_model(path), context=4096)
    while not isinstance(app.screen, ChatScreen) or app.screen.engine is None:
        await asyncio.sleep(0.01)
    return app.screen


def make_app(threads: int, settings):
    from tui.app import FitchatApp
    from tui.services import Services

    app = FitchatApp(Services(n_threads=threads, endpoint="http://127.0.0.1:9"), check_hub=False)
    app.sampling = settings
    return app


def with_ui(path: Path, settings, threads: int) -> tuple[float, float, int, float]:
    """(engine decode tok/s, UI tok/s, tokens, UI thread CPU share) for one reply through the chat screen."""
    app = make_app(threads, settings)
    result: dict[str, float] = {}

    async def run() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await _chat_screen(app, path)
            input_box = screen.query_one("#chat-input")
            input_box.text = PROMPT
            await pilot.press("enter")
            while not screen.generating:
                await asyncio.sleep(0.02)
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            while screen.generating:
                await asyncio.sleep(0.02)
            done = time.perf_counter()
            result["ui_cpu"] = (time.thread_time() - cpu0) / (done - wall0)
            stats = screen.engine.last_stats
            result["engine"] = stats.decode_tokens_per_s
            result["tokens"] = screen._count
            result["ui"] = (screen._count - 1) / (done - screen._t_first)

    asyncio.run(run())
    return result["engine"], result["ui"], int(result["tokens"]), result["ui_cpu"]


def replay(path: Path, pieces: list[str], threads: int, settings, pace: float | None) -> tuple[float, float]:
    """(tok/s shown, seconds the screen lagged behind the last token) replaying ``pieces``."""
    from tui.coalesce import Coalescer
    from tui.screens.chat import COALESCE_S, ChatScreen

    app = make_app(threads, settings)
    out: dict[str, float] = {}

    async def run() -> None:
        async with app.run_test(size=(120, 40)):
            screen = await _chat_screen(app, path)
            screen._reply = await screen._add_message("assistant", "")
            screen.query_one("#messages").anchor()
            screen.generating = True
            sent: list[float] = []

            def feed() -> None:
                # What the generation worker does, with recorded pieces in place of llama.cpp.
                out = Coalescer(lambda text, count: screen.post_message(ChatScreen.Token(text, count)), COALESCE_S)
                start = time.perf_counter()
                for i, piece in enumerate(pieces):
                    if pace:
                        while time.perf_counter() < start + i / pace:
                            time.sleep(0.0005)
                    out.add(piece)
                out.flush()
                sent.append(time.perf_counter())
                screen.post_message(ChatScreen.Finished(None, None, False))

            t0 = time.perf_counter()
            threading.Thread(target=feed, daemon=True).start()
            while screen.generating:
                await asyncio.sleep(0.02)
            done = time.perf_counter()
            out["rate"] = len(pieces) / (done - t0)
            out["lag"] = done - sent[0]

    asyncio.run(run())
    return out["rate"], out["lag"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    private_home()
    from runner.engine import SamplingSettings

    path = args.model or default_model()
    settings = SamplingSettings(temperature=0.0, seed=1, max_tokens=args.tokens)
    alone, engine_ui, ui, cpu, pieces = [], [], [], [], []
    for r in range(args.rounds):
        a, pieces = engine_alone(path, settings, args.threads)
        e, u, n, c = with_ui(path, settings, args.threads)
        alone.append(a)
        engine_ui.append(e)
        ui.append(u)
        cpu.append(c)
        print(f"round {r + 1}: engine alone {a:6.1f} tok/s | with UI: engine {e:6.1f} tok/s ({e / a:.2f}x), "
              f"on screen {u:6.1f} tok/s ({n} tokens), UI thread busy {c:.0%} of the time", flush=True)
    a, e, u, c = (statistics.median(x) for x in (alone, engine_ui, ui, cpu))
    ratios = sorted(x / y for x, y in zip(engine_ui, alone))
    print(f"median: engine alone {a:.1f} tok/s; with the UI the engine decodes {e:.1f} tok/s "
          f"(per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}) and the screen shows {u:.1f} tok/s; "
          f"the UI thread is busy {c:.0%} of the time")
    fast_rate, fast_lag = replay(path, pieces, args.threads, settings, None)
    paced_rate, paced_lag = replay(path, pieces, args.threads, settings, 300.0)
    print(f"replay of the same {len(pieces)} tokens: as fast as posted {fast_rate:.0f} tok/s shown; "
          f"paced at 300 tok/s: {paced_rate:.0f} tok/s shown, screen current {paced_lag * 1000:.0f} ms "
          "after the last token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
