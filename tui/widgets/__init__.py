"""fitchat's widgets, one per module."""
