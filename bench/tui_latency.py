"""Keypress latency in the chat screen while a reply streams, against the same keys when idle.

    python bench/tui_latency.py [--model PATH] [--keys 40] [--threads N]

A thread plays the terminal: it stamps the time and hands a key event to the app's driver (as
the real input thread does), while the user "types the next question" into the prompt box. The
latency is the time until the prompt box holds the new character. Measured first with the app
idle, then while a long greedy reply streams from llama.cpp. Headless Textual (120x40): frames
are composed but not written to a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tui_throughput import _chat_screen, default_model, make_app, private_home  # noqa: E402

PROMPT = "Write a very long story about a lighthouse keeper, in many chapters."


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(path: Path, threads: int | None, keys: int, streaming: bool) -> tuple[list[float], int, float | None]:
    """Latencies in seconds, how many pieces streamed meanwhile, and how long Esc took to stop the reply."""
    from textual import events

    from fitchat.llama.engine import SamplingSettings

    app = make_app(threads, SamplingSettings(temperature=0.0, seed=1, max_tokens=4000))
    out: list[float] = []
    streamed = [0]
    stop: list[float] = []

    async def run() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await _chat_screen(app, path)
            box = screen.query_one("#chat-input")
            if streaming:
                box.text = PROMPT
                await pilot.press("enter")
                while screen._count < 5:
                    await asyncio.sleep(0.01)
            box.focus()
            await pilot.pause()
            loop = asyncio.get_running_loop()
            driver = app._driver
            for i in range(keys):
                before = len(box.text)
                sent: list[float] = []

                def press(sent: list[float] = sent) -> None:
                    event = events.Key("x", "x")
                    event.set_sender(app)
                    sent.append(time.perf_counter())
                    loop.call_soon_threadsafe(driver.send_message, event)

                threading.Thread(target=press).start()
                while len(box.text) == before:
                    await asyncio.sleep(0.0005)
                out.append(time.perf_counter() - sent[0])
                await asyncio.sleep(0.05 + (i % 5) * 0.013)  # keys at an uneven typing pace
            streamed[0] = screen._count
            if screen.generating:
                escape = events.Key("escape", None)
                escape.set_sender(app)
                t0 = time.perf_counter()
                driver.send_message(escape)
                while screen.generating:
                    await asyncio.sleep(0.0005)
                stop.append(time.perf_counter() - t0)

    asyncio.run(run())
    return out, streamed[0], stop[0] if stop else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None,
                        help="decode threads (default: the count the app measures and uses)")
    args = parser.parse_args()
    private_home()
    path = args.model or default_model()
    idle, _, _ = measure(path, args.threads, args.keys, streaming=False)
    busy, pieces, stop = measure(path, args.threads, args.keys, streaming=True)
    for label, values in (("idle", idle), ("streaming", busy)):
        ms = [v * 1000 for v in values]
        print(f"{label:<10} p50 {statistics.median(ms):6.1f} ms  p95 {pct(ms, 0.95):6.1f} ms  max {max(ms):6.1f} ms"
              f"  ({len(ms)} keys)")
    print(f"while streaming ({pieces} pieces on screen): p50 {statistics.median(busy) / statistics.median(idle):.1f}x idle, "
          f"{sum(v <= 0.05 for v in busy)}/{len(busy)} keys within 50 ms")
    if stop is not None:
        print(f"Esc to reply stopped and saved: {stop * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
