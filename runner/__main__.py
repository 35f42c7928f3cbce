import sys

from fitchat.cli.main import main

sys.exit(main())
