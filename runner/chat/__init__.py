"""Conversations: a session held with a loaded engine, and the history they are saved to."""
