"""What a signal that ended a llama.cpp process most likely means: one table for every child that runs it.

The engine process, a compare's worker and the smoke decode all report a native death in these words.
"""

from __future__ import annotations

import signal

#: Signal name -> what it most likely means and what to do, as one clause.
SIGNAL_MEANING: dict[str, str] = {
    "SIGILL": "the llama.cpp build uses instructions this CPU lacks or does not enable (AMX under a hypervisor, "
    "or a -march=native build from another machine); run 'fitchat doctor'",
    "SIGKILL": "likely the out-of-memory killer; try a smaller quant or context",
    "SIGABRT": "llama.cpp refused the model or ran out of memory (a failed GGML_ASSERT)",
    "SIGSEGV": "a crash in llama.cpp (a bug in a backend kernel, or a broken build)",
    "SIGBUS": "a crash in llama.cpp (the model file may have changed or be on a failing disk)",
    "SIGFPE": "an arithmetic fault in a llama.cpp kernel",
}


def signal_name(returncode: int) -> str:
    """``-4`` -> ``'SIGILL'`` (a process killed by a signal has its negative number as return code)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def signal_meaning(name: str) -> str:
    """What the signal ``name`` most likely means for a process running llama.cpp (one clause)."""
    return SIGNAL_MEANING.get(name, "a native crash in llama.cpp, or it was stopped from outside")
