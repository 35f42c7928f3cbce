"""An OpenAI-compatible HTTP API over one loaded model (``fitchat serve``): Starlette on uvicorn."""
