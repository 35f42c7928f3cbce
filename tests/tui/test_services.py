"""The UI's door into runner: every llama.cpp computation on one thread, models freed before exit."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from fitchat.llama.engine import SamplingSettings
from fitchat.tui.services import LLAMA_NICENESS, LLAMA_THREAD, Services
from tests.tui_support import cpu_machine

GREEDY = SamplingSettings(temperature=0.0, seed=1, max_tokens=8)
HELLO = [{"role": "user", "content": "Hello"}]


def test_loads_and_replies_from_many_threads_run_on_one_llama_thread(smollm2: Path) -> None:
    services = Services(hardware=cpu_machine(), n_threads=1)
    seen: list[str] = []
    engine = services.on_llama_thread(lambda: (seen.append(threading.current_thread().name),
                                               services.load_engine(smollm2, plan=None, n_ctx=512,
                                                                    on_notice=lambda _m: None))[1])
    replies: list[str] = []

    def reply() -> None:  # as the UI's workers do, each from a pooled thread of its own
        pieces: list[str] = []
        services.stream_reply(engine.stream(HELLO, GREEDY),
                              lambda piece: (pieces.append(piece), seen.append(threading.current_thread().name)))
        replies.append("".join(pieces))

    for _ in range(3):
        caller = threading.Thread(target=reply)
        caller.start()
        caller.join()
    assert len(replies) == 3 and replies[0] and replies.count(replies[0]) == 3
    assert len(set(seen)) == 1 and seen[0].startswith(LLAMA_THREAD)
    services.close_engine(engine)
    services.close()  # waits for the model to be freed
    assert not engine.alive


async def test_the_app_shortens_the_gil_switch_interval_while_it_runs() -> None:
    import sys

    from fitchat.tui.app import GIL_SWITCH_INTERVAL_S, FitchatApp

    before = sys.getswitchinterval()
    app = FitchatApp(Services(hardware=cpu_machine(), endpoint="http://127.0.0.1:9"), check_hub=False)
    async with app.run_test():
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before


def thread_niceness(pid: int | str = "self") -> dict[int, int]:
    """Each thread of a process: its nice value, from /proc (field 19 of a task's stat)."""
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        out[int(tid)] = int(fields[16])
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_the_engine_process_and_its_openmp_threads_yield_to_the_ui(smollm2: Path) -> None:
    services = Services(hardware=cpu_machine(), n_threads=2)
    before = thread_niceness()
    ui = threading.get_native_id()
    engine = services.load_engine(smollm2, plan=None, n_ctx=512, on_notice=lambda _m: None)
    services.stream_reply(engine.stream(HELLO, GREEDY), lambda _piece: None)
    in_engine = thread_niceness(engine.pid)  # its main thread, its control thread and llama.cpp's OpenMP workers
    after = thread_niceness()
    services.close_engine(engine)
    services.close()
    assert engine.pid != os.getpid() and len(in_engine) >= 3
    assert all(nice == before[ui] + LLAMA_NICENESS for nice in in_engine.values())
    assert after[ui] == before[ui]  # the UI keeps its priority


def test_a_worker_that_is_down_is_asked_once_not_once_per_plan(rpc_build: None) -> None:
    """The home screen plans every model row: a worker that is down must cost one probe, then the same one line."""
    import time

    from fitchat.errors import FitchatError
    from tests.rpc_support import free_port

    services = Services(hardware=cpu_machine(), n_threads=1)
    services.set_workers((f"127.0.0.1:{free_port()}",))  # nothing listens there
    with pytest.raises(FitchatError) as first:
        services.with_workers(cpu_machine())
    t0 = time.monotonic()
    for _ in range(20):
        with pytest.raises(FitchatError) as again:
            services.with_workers(cpu_machine())
        assert str(again.value) == str(first.value)
    assert time.monotonic() - t0 < 0.5
    # A Hub model and a new context are planned with the workers too, as a file on disk is: the same line.
    with pytest.raises(FitchatError) as remote:
        services.remote_plans("org/model", cpu_machine(), 4096)
    with pytest.raises(FitchatError) as replanned:
        services.replan([], cpu_machine(), 8192)
    assert str(remote.value) == str(replanned.value) == str(first.value)
    # Setting the workers again asks again (say, once the worker has been started).
    services.set_workers(services.rpc)
    assert services._rpc_failure is None
