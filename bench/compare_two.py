"""Wall time of a default ``fitchat compare`` of two SmolLM2 variants, cold and with the reference cached.

    python bench/compare_two.py [--ctx 512] [--budget 8192] [--threads N]

Three runs of the same compare (Q8_0 reference against Q4_K_M) in one fresh cache:

1. cold: nothing cached; the reference pass writes its log-probabilities, then Q4_K_M is scored;
2. reference cached: Q4_K_M's result is dropped, the reference's log-probabilities and result stay;
3. all cached: the same compare again.

Prints each wall time and its ratio to the cold run. CPU timings on a shared machine are noisy; the
ratios are what this measures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="fitchat-bench-compare-")
    from fitchat.compare import run as C
    from tests import models

    q8, q4 = models.smollm2_variant("Q8_0"), models.smollm2_variant("Q4_K_M")
    settings = C.CompareSettings(ctx=args.ctx, budget=args.budget, n_threads=args.threads)

    def timed() -> tuple[float, C.CompareReport]:
        # what `fitchat compare Q8_0.gguf Q4_K_M.gguf` does after start-up: read the headers, detect the
        # hardware, plan the fit, hash (or recall the hashes), then measure or read the cache
        start = time.perf_counter()
        report = C.compare(C.resolve_sources([str(q8), str(q4)]), settings=settings)
        return time.perf_counter() - start, report

    cold, report = timed()
    text_sha = hashlib.sha256(C.read_text(None)).hexdigest()
    q4_key = C._result_key(C.file_sha256(q4), C.file_sha256(q8), text_sha, settings)
    (C.cache_root() / "results" / f"{q4_key}.json").unlink()
    ref_cached, report2 = timed()
    all_cached, report3 = timed()
    assert [v.cached for v in report2.variants] == [True, False]
    assert all(v.cached for v in report3.variants)

    row = report.variants[1]
    print(f"SmolLM2-135M Q8_0 (reference) vs Q4_K_M, ctx {settings.ctx}, budget {settings.budget} tokens per variant, "
          f"{row.tokens_scored} tokens scored")
    print(f"  mean KLD {row.mean_kld:.5f}, top-1 {100 * row.top1_agreement:.2f}%, PPL {row.ppl:.4f} "
          f"(reference {report.reference.ppl:.4f})")
    print(f"cold                 {cold:8.2f} s   1.00x")
    print(f"reference cached     {ref_cached:8.2f} s   {cold / ref_cached:5.2f}x faster than cold")
    print(f"all cached           {all_cached:8.3f} s   {cold / all_cached:5.0f}x faster than cold "
          "(headers, hardware, fit plans and cache look-ups only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
