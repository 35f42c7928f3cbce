"""fitchat's Textual UI. It renders what ``runner`` returns and does no work of its own."""
