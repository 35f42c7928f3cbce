"""``fitchat compare`` on the real SmolLM2 variants: Q8_0 as the reference against Q4_K_M.

Small context and budget so the module stays quick; the models load once per pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.compare import run as C
from fitchat.compare import worker
from fitchat.errors import Cancelled
from tests.models import place_in_hf_cache
from tests.processes import restore_ctrl_c

CTX = 128
PROBES = C.ProbeSet(seed=0, arithmetic=2, needle_depths=(0.5,), speed_tokens=64)
SETTINGS = C.CompareSettings(ctx=CTX, budget=800, probes=PROBES)
CLI_ARGS = ["--ctx", str(CTX), "--budget", "800", "--arithmetic", "2", "--needle-depths", "0.5"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare-cache")


@pytest.fixture
def use_shared(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    return shared_cache


@pytest.fixture(scope="module")
def cold(smollm2_variants: dict[str, Path], shared_cache: Path) -> dict:
    """One real compare, Q8_0 against Q4_K_M, from an empty cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(shared_cache))
        candidates = C.resolve_sources([str(smollm2_variants["Q4_K_M"]), str(smollm2_variants["Q8_0"])])
        events: list[C.Progress] = []
        t0 = time.perf_counter()
        report = C.compare(candidates, settings=SETTINGS, progress=events.append)
        return {"report": report, "events": events, "seconds": time.perf_counter() - t0, "candidates": candidates}


def _row(report: C.CompareReport, quant: str) -> C.VariantResult:
    return next(v for v in report.variants if v.quant == quant)


def test_reference_is_the_most_precise_and_scores_exactly_zero_against_itself(cold: dict) -> None:
    report = cold["report"]
    ref = report.reference
    assert ref.quant == "Q8_0" and ref.is_reference and report.variants[0] is ref
    assert ref.mean_kld == 0.0
    assert ref.top1_agreement == 1.0
    n_chunks = ref.tokens_scored // (CTX - 1 - CTX // 2)
    assert n_chunks >= 2 and ref.tokens_scored == n_chunks * (CTX - 1 - CTX // 2)
    assert 1 < ref.ppl < 200


def test_reference_rescored_in_a_fresh_load_is_still_exactly_zero(cold: dict, use_shared: Path,
                                                                  smollm2_variants: dict[str, Path]) -> None:
    (logits,) = (use_shared / "fitchat" / "compare" / "reference").glob("*.logits")
    sums = C.score_variant(smollm2_variants["Q8_0"], logits)
    assert sums.kld == 0.0
    assert sums.same_top == sums.count == cold["report"].reference.tokens_scored
    assert sums.ppl == cold["report"].reference.ppl


def test_q4_k_m_drifts_from_the_reference(cold: dict) -> None:
    q4 = _row(cold["report"], "Q4_K_M")
    assert not q4.is_reference and q4.skipped is None
    assert math.isfinite(q4.mean_kld) and q4.mean_kld > 0
    assert 0.5 < q4.top1_agreement < 1.0
    assert math.isfinite(q4.ppl) and q4.ppl > 1
    assert q4.tokens_scored == cold["report"].reference.tokens_scored
    assert q4.decode_tokens_per_s and q4.decode_tokens_per_s > 0
    assert q4.arithmetic_total == 2 and q4.needle_total == 1
    assert [a.kind for a in q4.answers] == ["arithmetic", "arithmetic", "needle"]


def test_progress_is_monotonic_and_reaches_the_end(cold: dict) -> None:
    events = cold["events"]
    done = [e.done for e in events]
    assert done == sorted(done)
    assert events[-1].done == events[-1].total and events[-1].stage == "done"
    stages = {e.stage for e in events}
    assert {"reference", "text", "arithmetic", "needle", "speed"} <= stages


def test_second_run_is_cached_and_instant(cold: dict, use_shared: Path) -> None:
    events: list[C.Progress] = []
    timings: list[float] = []
    for _ in range(3):  # best of three: one stall of a loaded machine says nothing about the cache
        t0 = time.perf_counter()
        again = C.compare(cold["candidates"], settings=SETTINGS, progress=events.append)
        timings.append(time.perf_counter() - t0)
    assert all(v.cached for v in again.variants)
    assert events == []  # nothing was evaluated
    for a, b in zip(cold["report"].variants, again.variants, strict=True):
        assert (a.ppl, a.mean_kld, a.top1_agreement, a.arithmetic_correct, a.needle_found) == \
               (b.ppl, b.mean_kld, b.top1_agreement, b.arithmetic_correct, b.needle_found)
    # Headers, hardware, plans and cache look-ups only: far faster than evaluating the text again.
    assert min(timings) < cold["seconds"] / 20, f"cached {timings} s vs cold {cold['seconds']:.2f} s"


def test_verdict_and_table_in_plain_words(cold: dict) -> None:
    report = cold["report"]
    words = C.verdict_lines(report)
    q4 = _row(report, "Q4_K_M")
    assert words[0].startswith(f"Q4_K_M agrees with Q8_0 on {100 * q4.top1_agreement:.1f}% of tokens and runs")
    assert "arithmetic" in words[0] and "against" in words[0] and "perplexity" in words[0]
    table = C.render_table(report).splitlines()
    assert table[0].split() == ["Variant", "Size", "Fit", "tok/s", "PPL", "Mean", "KLD", "Top-1", "Arith", "Needle"]
    assert table[2].startswith("Q8_0 (ref)") and "100.0%" in table[2] and "CPU" in table[2]
    assert table[3].startswith("Q4_K_M")
    # A probe that did not run, or a figure that is not finite, is a dash, not "0/0" or "inf".
    unprobed = dataclasses.replace(q4, arithmetic_correct=0, arithmetic_total=0, ppl=math.inf)
    cells = dict(zip(C.TABLE_HEAD, C.variant_cells(unprobed), strict=True))
    assert cells["Arith"] == C.DASH and cells["PPL"] == C.DASH
    assert cells["Mean KLD"] == f"{q4.mean_kld:.5f}" and cells["Top-1"] == f"{100 * q4.top1_agreement:.1f}%"


def test_cli_json_contract_reads_the_cache(cold: dict, use_shared: Path, smollm2_variants: dict[str, Path],
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "variants"
    folder.mkdir()
    for quant in ("Q8_0", "Q5_K_M", "Q4_K_M"):
        (folder / smollm2_variants[quant].name).symlink_to(smollm2_variants[quant])
    rc = main(["compare", str(folder), "--quants", "Q4_K_M", *CLI_ARGS, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert data["reference"]["quant"] == "Q8_0" and data["reference"]["file"] == "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert [v["quant"] for v in data["variants"]] == ["Q8_0", "Q4_K_M"]
    for v in data["variants"]:
        assert {"file", "quant", "size_bytes", "ppl", "mean_kld", "top1_agreement", "arithmetic", "needle",
                "decode_tokens_per_s"} <= set(v)
        assert v["cached"] is True
    assert data["variants"][1]["mean_kld"] == _row(cold["report"], "Q4_K_M").mean_kld
    assert data["variants"][1]["arithmetic"]["total"] == 2


def test_cli_table(cold: dict, use_shared: Path, smollm2_variants: dict[str, Path],
                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compare", str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"]), *CLI_ARGS])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Q8_0 (ref)" in out and "Q4_K_M agrees with Q8_0 on" in out and "2 of 2 rows from the cache" in out


def test_cli_compares_the_downloaded_variants_of_a_repo(cold: dict, use_shared: Path, smollm2_variants: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A repo in the Hugging Face cache (as 'fitchat pull' leaves it): every downloaded variant is a candidate."""
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    place_in_hf_cache(repo, [smollm2_variants[q] for q in ("Q8_0", "Q5_K_M", "Q4_K_M")])
    rc = main(["compare", repo, "--quants", "Q4_K_M", *CLI_ARGS, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [(v["quant"], v["cached"]) for v in data["variants"]] == [("Q8_0", True), ("Q4_K_M", True)]
    assert main(["compare", f"{repo}:Q3_K_M"]) == 1
    assert "has no local Q3_K_M" in capsys.readouterr().err


# -- cancel, budget, bad input --------------------------------------------------------------------

TINY = C.CompareSettings(ctx=64, budget=128, probes=C.ProbeSet(arithmetic=0, needle_depths=(), speed_tokens=0))


def _cache_files() -> list[Path]:
    root = C.cache_root()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "sha256.json") if root.exists() else []


def _cancel_when(stage: str, variant_prefix: str, cancel: threading.Event):
    def progress(p: C.Progress) -> None:
        if p.stage == stage and p.variant.startswith(variant_prefix) and p.done > 0:
            cancel.set()
    return progress


def test_cancel_in_the_reference_pass_leaves_no_cache_entry(smollm2_variants: dict[str, Path]) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"])])
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        C.compare(candidates, settings=TINY, progress=_cancel_when("reference", "Q8_0", cancel), cancel=cancel)
    assert _cache_files() == []


def test_cancel_in_a_variant_pass_keeps_only_finished_entries(smollm2_variants: dict[str, Path]) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"])])
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        C.compare(candidates, settings=TINY, progress=_cancel_when("text", "Q4_K_M", cancel), cancel=cancel)
    files = _cache_files()
    names = sorted(p.parent.name + "/" + p.suffix for p in files)
    # the reference's log-probs, its plan and its finished result; nothing for Q4_K_M, nothing partial
    assert names == ["reference/.json", "reference/.logits", "results/.json"], files
    assert not any("partial" in p.name or p.name.endswith(".tmp") for p in files)
    # the next run picks up from there and finishes
    report = C.compare(candidates, settings=TINY)
    assert [v.cached for v in report.variants] == [True, False]
    assert report.variants[1].mean_kld > 0


def test_budget_too_small_says_what_to_use(smollm2_variants: dict[str, Path]) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"])])
    settings = C.CompareSettings(ctx=128, budget=300, probes=PROBES)
    with pytest.raises(C.BudgetTooSmall, match=r"use --budget \d+ or more"):
        C.compare(candidates, settings=settings)
    assert _cache_files() == []


def test_text_shorter_than_a_context(tmp_path: Path, smollm2_variants: dict[str, Path]) -> None:
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.\n")
    settings = C.CompareSettings(ctx=128, budget=5000, text_path=text, probes=PROBES)
    with pytest.raises(C.TextTooShort, match="fewer than one context of 128"):
        C.compare(C.resolve_sources([str(smollm2_variants["Q8_0"])]), settings=settings)


def test_cli_bad_input_is_one_line(tmp_path: Path, smollm2_variants: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    q8 = str(smollm2_variants["Q8_0"])
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    cases = [
        ([q8, "--ctx", "16"], "too small"),
        ([q8, "--text", str(binary)], "not UTF-8"),
        ([q8, "--text", str(tmp_path / "missing.txt")], "cannot read"),
        ([str(tmp_path / "nothing.gguf")], "no such file"),
        ([q8, "--quants", "Q3_K_S"], "Q3_K_S not among the variants"),
        ([q8, "--needle-depths", "2"], "between 0 and 1"),
        ([q8, "--budget", "0"], "positive"),
    ]
    for argv, message in cases:
        assert main(["compare", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("fitchat: error: ") and message in err and err.count("\n") == 1, err


def test_variants_of_another_model_are_refused(smollm2_variants: dict[str, Path], gemma3: Path) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(gemma3)])
    with pytest.raises(C.VocabMismatch, match="compare variants of one model"):
        C.compare(candidates, settings=TINY)


def test_reference_that_does_not_fit_gives_way(smollm2_variants: dict[str, Path]) -> None:
    from fitchat.model.hardware import detect_hardware
    from fitchat.model.plan import default_ram_margin, plan_hardware, plan_model

    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"])])
    hw = plan_hardware(detect_hardware(), gpu_mem=0)
    need = {c.quant: plan_model(c.spec, hw, 64, margin_bytes=0).estimate.total_bytes for c in candidates}
    usable = (need["Q8_0"] + need["Q4_K_M"]) // 2  # room for Q4_K_M, not for Q8_0
    small = plan_hardware(hw, ram=usable + default_ram_margin(usable + 512 * 2**20))
    plans = {c.path: plan_model(c.spec, small, 64, margin_bytes=0) for c in candidates}
    ref, note = C.pick_reference(candidates, plans, 64)
    assert ref.quant == "Q4_K_M" and note and "Q8_0 does not fit" in note
    report = C.compare(candidates, settings=TINY, plans=plans)
    assert report.reference.quant == "Q4_K_M"
    q8 = _row(report, "Q8_0")
    assert q8.skipped and q8.fit == "too_big" and q8.mean_kld is None
    words = C.verdict_lines(report)
    assert words[0] == note and any(w.startswith("Q8_0 was not measured") for w in words)


def test_ctrl_c_cancels_the_cli_and_keeps_nothing_partial(smollm2_variants: dict[str, Path]) -> None:
    import signal
    import subprocess
    import sys

    root = C.cache_root()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitchat", "compare", str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"]),
         "--ctx", "64", "--budget", "4096", "--arithmetic", "0", "--needle-depths", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), preexec_fn=restore_ctrl_c,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(root.rglob("*.partial")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(root.rglob("*.partial")), "the reference pass never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "compare cancelled" in err and "Traceback" not in err
    assert _cache_files() == []


# -- a worker that dies ---------------------------------------------------------------------------

#: Long enough that the worker is still in its reference pass when it is killed.
KILLED = C.CompareSettings(ctx=64, budget=4096, n_threads=1,
                           probes=C.ProbeSet(arithmetic=0, needle_depths=(), speed_tokens=0))


def _kill_worker() -> int:
    """SIGKILL the one compare worker this process runs (as the out-of-memory killer would)."""
    (pid,) = worker.running()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_mid_run_is_one_line_naming_the_signal(smollm2_variants: dict[str, Path]) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"])])
    killed: list[int] = []

    def progress(p: C.Progress) -> None:
        if p.stage == "reference" and p.done > 0 and not killed:
            killed.append(_kill_worker())

    with pytest.raises(worker.WorkerDied) as caught:
        C.compare(candidates, settings=KILLED, progress=progress)
    assert killed and killed[0] != os.getpid()
    message = str(caught.value)
    assert "\n" not in message and "SIGKILL" in message and "out-of-memory" in message, message
    assert caught.value.signal_name == "SIGKILL" and caught.value.returncode == -signal.SIGKILL
    assert worker.running() == []
    assert _cache_files() == []  # no reference, no result, no partial file of the dead worker


def test_sigterm_to_the_worker_cancels_and_keeps_nothing_partial(smollm2_variants: dict[str, Path]) -> None:
    candidates = C.resolve_sources([str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"])])
    sent: list[float] = []

    def progress(p: C.Progress) -> None:
        if p.stage == "reference" and p.done > 0 and not sent:
            (pid,) = worker.running()
            os.kill(pid, signal.SIGTERM)
            sent.append(time.monotonic())

    with pytest.raises(Cancelled):
        C.compare(candidates, settings=KILLED, progress=progress)
    assert sent and time.monotonic() - sent[0] < worker.CANCEL_GRACE_S  # it stopped by itself, not killed
    assert worker.running() == []
    assert _cache_files() == []


def test_cli_exits_1_with_one_line_when_the_worker_is_killed(smollm2_variants: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", str(smollm2_variants["Q8_0"]), str(smollm2_variants["Q4_K_M"]),
            "--ctx", "64", "--budget", "4096", "--arithmetic", "0", "--needle-depths", "none", "--threads", "1"]
    outcome: dict[str, int] = {}
    cli = threading.Thread(target=lambda: outcome.update(rc=main(argv)), daemon=True)
    cli.start()
    root = C.cache_root()
    deadline = time.monotonic() + 120
    while not (worker.running() and list(root.rglob("*.partial"))) and time.monotonic() < deadline and cli.is_alive():
        time.sleep(0.02)
    assert list(root.rglob("*.partial")), "the reference pass never started"
    _kill_worker()
    cli.join(timeout=60)
    assert outcome.get("rc") == 1
    err = capsys.readouterr().err
    assert err.startswith("fitchat: error: ") and err.count("\n") == 1, err
    assert "died of SIGKILL" in err and "Traceback" not in err
    assert _cache_files() == []
