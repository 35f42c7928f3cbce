"""fitchat compare against llama.cpp's own ``llama-perplexity``, side by side (slow).

Same text (the bundled one), same context (512, llama-perplexity's default), same files (SmolLM2
Q8_0 as the reference, Q4_K_M as the variant), six chunks. Perplexity, mean KLD and top-1 agreement
("Same top p") must agree within 2% relative, in three ways:

1. each tool computes everything itself;
2. fitchat scores the variant against llama-perplexity's own reference file;
3. llama-perplexity scores the variant against fitchat's reference file.

``llama-perplexity`` comes from ``$LLAMA_PERPLEXITY``, the PATH, or is built once from the
llama.cpp inside the llama-cpp-python sdist of the installed version (``tests.models.llama_tool``;
a few minutes of compiling).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from fitchat.compare import run as C
from tests.models import llama_tool

pytestmark = pytest.mark.slow

CTX = 512
CHUNKS = 6
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def llama_perplexity() -> Path:
    return llama_tool("llama-perplexity")


def _run(binary: Path, *args: str) -> dict[str, float]:
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        p for p in (str(binary.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p))
    out = subprocess.run([str(binary), *args, "-t", str(os.cpu_count() or 2)], env=env, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    figures = {}
    for name, pattern in (("ppl", r"Mean PPL\(Q\)\s*:\s*([\d.]+)"), ("ppl_base", r"Mean PPL\(base\)\s*:\s*([\d.]+)"),
                          ("kld", r"Mean\s+KLD:\s*([\d.]+)"), ("top1", r"Same top p:\s*([\d.]+)")):
        m = re.search(pattern, out)
        if m:
            figures[name] = float(m.group(1)) / (100 if name == "top1" else 1)
    return figures


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * abs(b)


def test_fitchat_agrees_with_llama_perplexity(llama_perplexity: Path, smollm2_variants: dict[str, Path],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q8, q4 = smollm2_variants["Q8_0"], smollm2_variants["Q4_K_M"]
    text = C.bundled_text_path()

    base = tmp_path / "llama-base.bin"
    subprocess.run([str(llama_perplexity), "-m", str(q8), "-f", str(text), "-c", str(CTX), "--chunks", str(CHUNKS),
                    "--kl-divergence-base", str(base), "-t", str(os.cpu_count() or 2)], check=True, capture_output=True,
                   env=dict(os.environ, LD_LIBRARY_PATH=str(llama_perplexity.parent)))
    llama = _run(llama_perplexity, "-m", str(q4), "-c", str(CTX), "--kl-divergence-base", str(base), "--kl-divergence")

    settings = C.CompareSettings(ctx=CTX, budget=CHUNKS * CTX,
                                 probes=C.ProbeSet(arithmetic=0, needle_depths=(), speed_tokens=0))
    report = C.compare(C.resolve_sources([str(q8), str(q4)]), settings=settings)
    ref, var = report.reference, report.variants[1]
    assert var.tokens_scored == CHUNKS * (CTX - 1 - CTX // 2)
    fitchat = {"ppl": var.ppl, "ppl_base": ref.ppl, "kld": var.mean_kld, "top1": var.top1_agreement}

    on_llama_base = C.score_variant(q4, base)
    crossed = {"ppl": on_llama_base.ppl, "ppl_base": on_llama_base.ppl_base, "kld": on_llama_base.mean_kld,
               "top1": on_llama_base.top1}

    (fitchat_base,) = (C.cache_root() / "reference").glob("*.logits")
    llama_on_fitchat = _run(llama_perplexity, "-m", str(q4), "-c", str(CTX), "--kl-divergence-base", str(fitchat_base),
                            "--kl-divergence")

    with capsys.disabled():
        print(f"\nSmolLM2-135M Q8_0 -> Q4_K_M, ctx {CTX}, {CHUNKS} chunks, {var.tokens_scored} tokens scored")
        print(f"{'':28}{'PPL(Q)':>12}{'PPL(base)':>12}{'Mean KLD':>12}{'Same top':>10}")
        for name, f in (("llama-perplexity", llama), ("fitchat", fitchat), ("fitchat on llama's base", crossed),
                        ("llama on fitchat's base", llama_on_fitchat)):
            print(f"{name:28}{f['ppl']:12.6f}{f['ppl_base']:12.6f}{f['kld']:12.6f}{100 * f['top1']:9.3f}%")

    for figures in (fitchat, crossed, llama_on_fitchat):
        for key in ("ppl", "ppl_base", "kld", "top1"):
            assert _close(figures[key], llama[key]), (key, figures[key], llama[key])
