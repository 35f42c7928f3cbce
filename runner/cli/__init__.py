"""One module per ``fitchat`` subcommand group; each exposes ``register(subparsers)``."""
