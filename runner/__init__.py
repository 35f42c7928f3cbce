"""fitchat's core: hardware, GGUF inspection and fit estimates, the Hub, chat and history.

Nothing in this package imports Textual; the TUI in ``tui/`` renders what it returns.
"""

__version__ = "0.1.0"
