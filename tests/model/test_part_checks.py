"""part_checks: the estimate beside llama.cpp's figures, part by part, with fitchat's tolerances."""

from __future__ import annotations

from pathlib import Path

from fitchat.model.estimate import DEFAULT_SETTINGS, estimate
from fitchat.model.gguf_spec import read_spec
from fitchat.model.measure import MiB, measure, part_checks


def test_a_dry_run_takes_the_file_weights_into_its_total(smollm2: Path) -> None:
    est = estimate(read_spec(smollm2), 2048, DEFAULT_SETTINGS)
    meas = measure(smollm2, 2048, DEFAULT_SETTINGS, mode="dry_run")
    checks = {c.name: c for c in part_checks(est, meas)}
    assert list(checks) == ["weights", "KV cache", "compute", "output", "total"]
    assert checks["weights"].measured is None and checks["weights"].within is None
    assert checks["KV cache"].measured == meas.kv_bytes == 45 * MiB and checks["KV cache"].within
    total = checks["total"]
    assert total.weights_estimated
    assert total.measured == est.weights_bytes + meas.kv_bytes + meas.compute_bytes + meas.output_bytes
    assert total.within


def test_a_miss_beyond_the_tolerance_is_flagged(smollm2: Path) -> None:
    import dataclasses

    est = estimate(read_spec(smollm2), 2048, DEFAULT_SETTINGS)
    meas = measure(smollm2, 2048, DEFAULT_SETTINGS, mode="dry_run")
    # 17 MiB over a 45 MiB KV cache: beyond max(2 %, 16 MiB).
    off = dataclasses.replace(meas, kv_bytes=meas.kv_bytes + 17 * MiB)
    checks = {c.name: c for c in part_checks(est, off)}
    assert checks["KV cache"].within is False
    assert checks["compute"].within  # the others keep their verdict
