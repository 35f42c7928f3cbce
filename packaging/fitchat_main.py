"""Entry point of the standalone fitchat bundle (PyInstaller runs this file)."""

import sys

from fitchat.child import CHILD_FLAG, run_child_module
from fitchat.cli.main import main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:  # one of fitchat's own children (the engine …)
        sys.exit(run_child_module(sys.argv[2:]))
    sys.exit(main())
