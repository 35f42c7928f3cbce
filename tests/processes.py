"""Child processes the tests start and then interrupt as ctrl+c would."""

from __future__ import annotations

import signal


def restore_ctrl_c() -> None:
    """``preexec_fn``: SIGINT back to its default in the child, so the test's SIGINT acts as ctrl+c in a terminal.

    A test run started in the background of a non-interactive shell (``.ci/run &``) has SIGINT ignored, and
    its children inherit that: Python then installs no KeyboardInterrupt handler and the signal does nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
