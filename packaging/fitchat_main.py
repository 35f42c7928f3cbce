"""Entry point of the standalone fitchat bundle (PyInstaller runs this file)."""

import sys

from fitchat.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
