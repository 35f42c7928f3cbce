"""llama.cpp's process-wide state has one owner: the log callback is held, counted, by every model that needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitchat.compare.run import ScoringModel
from fitchat.errors import LoadFailed
from fitchat.llama.engine import ChatEngine
from fitchat.llama.runtime import AbortFlag, LlamaLog


def test_a_compare_model_closing_leaves_the_log_to_the_chat_engine_that_still_holds_it(smollm2: Path,
                                                                                     tmp_path: Path) -> None:
    log = LlamaLog.shared()
    before = log.holders
    engine = ChatEngine.load(smollm2, n_ctx=512, n_threads=1, calibrate=False)
    try:
        assert log.holders == before + 1
        with ScoringModel(smollm2, ctx=256, n_threads=1):
            assert log.holders == before + 2
        assert log.holders == before + 1, "compare gave llama.cpp's log back while the chat engine held it"
        broken = tmp_path / "broken.gguf"
        broken.write_bytes(b"GGUF" + b"\0" * 64)
        with pytest.raises(LoadFailed):
            ScoringModel(broken, ctx=256, n_threads=1)
        assert log.holders == before + 1  # a failed load gives its hold back too
        assert "".join(engine.stream([{"role": "user", "content": "Hi"}])) is not None
    finally:
        engine.close()
    assert log.holders == before


def test_the_abort_flag_stops_a_decode_and_can_be_cleared(smollm2: Path) -> None:
    import llama_cpp

    engine = ChatEngine.load(smollm2, n_ctx=512, n_threads=1, calibrate=False)
    try:
        flag = AbortFlag().attach(engine._ctx)  # replaces the engine's own flag for this context
        tokens = engine.tokenize("The quick brown fox jumps over the lazy dog. " * 8)
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        flag.set()
        assert flag.is_set()
        assert llama_cpp.llama_decode(engine._ctx, llama_cpp.llama_batch_get_one(arr, len(tokens))) == 2
        flag.clear()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(engine._ctx), True)
        assert llama_cpp.llama_decode(engine._ctx, llama_cpp.llama_batch_get_one(arr, len(tokens))) == 0
        flag.detach(engine._ctx)
    finally:
        engine._kv = []
        engine.close()
