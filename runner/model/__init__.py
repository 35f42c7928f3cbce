"""What a model needs and what a machine has: GGUF headers, quants, the memory estimate, plans and verdicts,
hardware, measuring. Pure: no network, no loaded model."""
