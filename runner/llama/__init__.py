"""llama.cpp at run time: the engine (one loaded model, streamed replies), sampling and thread counts."""
