"""Entry point of the standalone fitchat bundle (PyInstaller runs this file)."""

import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
