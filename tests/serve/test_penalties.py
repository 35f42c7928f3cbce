"""OpenAI's frequency and presence penalties pick the same tokens as llama-cpp-python's own sampler."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from fitchat.llama.engine import ChatEngine, SamplingSettings

STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]


def test_penalties_match_llama_cpp_python(smollm2: Path) -> None:
    import llama_cpp

    engine = ChatEngine.load(smollm2, n_ctx=2048, n_threads=1)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            bare = llama_cpp.Llama(str(smollm2), n_ctx=2048, n_threads=1, verbose=True, **engine.load_kwargs)
        try:
            for temp, seed in ((0.0, None), (0.8, 99)):
                theirs = bare.create_chat_completion(
                    STORY, temperature=temp, seed=seed, max_tokens=70, repeat_penalty=1.0,
                    frequency_penalty=0.9, presence_penalty=0.6,
                )["choices"][0]["message"]["content"]
                ours = "".join(engine.stream(STORY, SamplingSettings(
                    temperature=temp, seed=seed, max_tokens=70, repeat_penalty=1.0,
                    frequency_penalty=0.9, presence_penalty=0.6,
                )))
                plain = "".join(engine.stream(STORY, SamplingSettings(
                    temperature=temp, seed=seed, max_tokens=70, repeat_penalty=1.0)))
                assert ours == theirs
                assert ours != plain  # the penalties changed the reply
        finally:
            bare.close()
    finally:
        engine.close()
