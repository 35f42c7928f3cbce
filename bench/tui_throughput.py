"""Streaming throughput with the UI against the engine alone, in the same run.

    python bench/tui_throughput.py [--model PATH] [--tokens 256] [--rounds 5] [--threads N]

Each round runs the same greedy reply twice, alternating: once straight from ``ChatEngine.stream``
(no UI), once through the chat screen of the app (headless Textual, 120x40: the compositor
renders every frame, only the terminal write is skipped). Both use the same thread count: the one
the app measures and chooses, unless ``--threads`` names one. It reports
the engine's decode tok/s in both cases (does the UI slow generation?) and the UI's own rate:
tokens shown per second from the first token on screen to the last one rendered.

The bare replies run on the app's llama.cpp thread, as the app's own do (``Services.on_llama_thread``
says why); the engine alone, before the app starts, on a thread of its own that ends with it.

Last, the UI's ceiling: the recorded tokens of that reply replayed into the chat screen as fast
as a thread can post them, and again paced at 300 tok/s (how far behind is the screen when the
last token arrives?).
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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T = TypeVar("T")

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


def in_new_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread of its own that ends with it, taking its OpenMP threads with it."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def engine_alone(path: Path, settings, threads: int | None) -> tuple[float, list[str], int]:
    """Decode tok/s of the bare engine, the pieces it produced and its decode thread count."""
    from fitchat.llama.engine import ChatEngine

    def run() -> tuple[float, list[str], int]:
        engine = ChatEngine.load(path, n_ctx=4096, n_threads=threads)
        try:
            pieces = list(engine.stream([{"role": "user", "content": PROMPT}], settings))
            return engine.last_stats.decode_tokens_per_s, pieces, engine.threads.n_threads
        finally:
            engine.close()

    return in_new_thread(run)


def local_model(path: Path):
    from fitchat.hub.store import LocalModel

    return LocalModel(repo="bench/" + path.stem, file=path.name, quant="bench", size_bytes=path.stat().st_size,
                      path=path, sha256=None, source="imported")


async def _chat_screen(app, path: Path):
    from fitchat.tui.screens.chat import ChatScreen

    app.open_chat(local_model(path), context=4096)
    while not isinstance(app.screen, ChatScreen) or app.screen.engine is None:
        await asyncio.sleep(0.02)
    return app.screen


def make_app(threads: int | None, settings):
    from fitchat.tui.app import FitchatApp
    from fitchat.tui.services import Services

    app = FitchatApp(Services(n_threads=threads, endpoint="http://127.0.0.1:9"), check_hub=False)
    app.sampling = settings
    return app


def with_ui(path: Path, settings, threads: int | None) -> tuple[float, float, int, float, int]:
    """(engine decode tok/s, UI tok/s, tokens, UI thread CPU share, decode threads) for one reply on screen."""
    return paired(path, settings, threads, rounds=1, bare=False)[0][1:]


def paired(path: Path, settings, threads: int | None, rounds: int,
           bare: bool = True) -> list[tuple[float, float, float, int, float, int]]:
    """Rounds in one app session, each a reply with no UI work and the same reply on screen.

    Per round: (engine tok/s with the app idle, engine tok/s on screen, UI tok/s, tokens, UI thread
    CPU share from the first token to the end of generation, decode threads). The bare reply runs
    ``ChatEngine.stream`` on the app's own engine
    and llama.cpp thread while the app sits idle; the other goes through the chat input like a user's.
    The order alternates between rounds so that a drift in the machine's speed cancels out.
    """
    app = make_app(threads, settings)
    out: list[tuple[float, float, float, int, float, int]] = []

    async def run() -> None:
        async with app.run_test(size=(120, 40)):
            screen = await _chat_screen(app, path)

            def bare_reply() -> float:
                for _ in screen.engine.stream([{"role": "user", "content": PROMPT}], settings):
                    pass
                return screen.engine.last_stats.decode_tokens_per_s

            async def ui_reply() -> tuple[float, float, int, float]:
                await screen.action_new_chat()
                input_box = screen.query_one("#chat-input")
                input_box.text = PROMPT
                # What Enter does (ChatInput posts Submitted), without the Pilot's wait for the app to
                # go idle: that wait polls on the UI thread for as long as tokens come.
                input_box.post_message(type(input_box).Submitted(PROMPT))
                while not screen.generating:
                    await asyncio.sleep(0.005)
                while screen._t_first is None:
                    await asyncio.sleep(0.02)
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                # Waiting on the worker's event from another thread: polling would be UI-thread work.
                await asyncio.to_thread(screen._idle.wait)
                cpu1, wall1 = time.thread_time(), time.perf_counter()
                while screen.generating:
                    await asyncio.sleep(0.02)
                done = time.perf_counter()
                stats = screen.engine.last_stats
                return (stats.decode_tokens_per_s, (screen._count - 1) / (done - screen._t_first), screen._count,
                        (cpu1 - cpu0) / (wall1 - wall0))

            for r in range(rounds):
                alone = 0.0
                if bare and r % 2 == 0:
                    alone = await asyncio.to_thread(app.services.on_llama_thread, bare_reply)
                engine, ui, count, cpu = await ui_reply()
                if bare and r % 2 == 1:
                    alone = await asyncio.to_thread(app.services.on_llama_thread, bare_reply)
                out.append((alone, engine, ui, count, cpu, screen.engine.threads.n_threads))

    asyncio.run(run())
    return out


def replay(path: Path, pieces: list[str], threads: int, settings, pace: float | None) -> tuple[float, float]:
    """(tok/s shown, seconds the screen lagged behind the last token) replaying ``pieces``.

    "Shown" is the first frame after the reply's Markdown holds the whole text, before the reply
    is closed (by the Finished message, posted only then).
    """
    from fitchat.tui.coalesce import Coalescer
    from fitchat.tui.screens.chat import COALESCE_S, ChatScreen

    app = make_app(threads, settings)
    out: dict[str, float] = {}
    text = "".join(pieces)

    async def run() -> None:
        async with app.run_test(size=(120, 40)):
            screen = await _chat_screen(app, path)
            reply = screen._reply = await screen._add_message("assistant", "")
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

            t0 = time.perf_counter()
            threading.Thread(target=feed, daemon=True).start()
            while reply.markdown.source != text:
                await asyncio.sleep(0.001)
            painted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            app.call_after_refresh(lambda: painted.set_result(time.perf_counter()))
            done = await painted
            while not sent:  # the feeder stamps its time just after its last post
                await asyncio.sleep(0.001)
            out["rate"] = len(pieces) / (done - t0)
            out["lag"] = max(0.0, done - sent[0])
            screen.post_message(ChatScreen.Finished(None, None, False))
            while screen.generating:
                await asyncio.sleep(0.02)

    asyncio.run(run())
    return out["rate"], out["lag"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="decode threads for both runs (default: the count the app measures and uses)")
    args = parser.parse_args()
    private_home()
    from fitchat.llama.engine import SamplingSettings

    path = args.model or default_model()
    settings = SamplingSettings(temperature=0.0, seed=1, max_tokens=args.tokens)
    threads = args.threads
    if threads is None:  # the app's own choice, measured (and cached) by a first run through the UI
        threads = with_ui(path, settings, None)[4]
    print(f"decode threads: {threads} in both runs", flush=True)
    pieces = engine_alone(path, settings, threads)[1]
    rows = paired(path, settings, threads, args.rounds)
    for r, (a, e, u, n, c, _) in enumerate(rows):
        print(f"round {r + 1}: app idle, engine alone {a:6.1f} tok/s | on screen: engine {e:6.1f} tok/s "
              f"({e / a:.2f}x), shown {u:6.1f} tok/s ({n} tokens), UI thread busy {c:.0%} of the time while tokens came",
              flush=True)
    a, e, u, c = (statistics.median(row[i] for row in rows) for i in (0, 1, 2, 4))
    ratios = sorted(row[1] / row[0] for row in rows)
    print(f"median: engine alone {a:.1f} tok/s; with the UI the engine decodes {e:.1f} tok/s "
          f"(median ratio {statistics.median(ratios):.3f}; per round {', '.join(f'{r:.2f}' for r in ratios)}) "
          f"and the screen shows {u:.1f} tok/s; the UI thread is busy {c:.0%} of the time while tokens come")
    fast_rate, fast_lag = replay(path, pieces, threads, settings, None)
    paced_rate, paced_lag = replay(path, pieces, threads, settings, 300.0)
    print(f"replay of the same {len(pieces)} tokens: as fast as posted {fast_rate:.0f} tok/s shown; "
          f"paced at 300 tok/s: {paced_rate:.0f} tok/s shown, the last token on screen {paced_lag * 1000:.0f} ms "
          "after it was posted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
