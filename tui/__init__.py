"""fitchat's Textual UI. It renders what fitchat's core returns and does no work of its own."""
