"""Probes and scoring arithmetic of ``fitchat compare``: no model needed."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fitchat.compare import probes as P
from fitchat.compare import run as C

# -- arithmetic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [" 45448", "45448\n", " 45,448.", "247 * 184 = 45448", "The answer is 45448",
                                   " 45448\n12 + 7 = 19"])
def test_arithmetic_checker_accepts_the_exact_answer(reply: str) -> None:
    assert P.check_arithmetic(P.ArithmeticProblem(247, 184, "*", 45448), reply)


@pytest.mark.parametrize("reply", [" 45449", " 4544", " 454480", "", "forty-five thousand", " 184 * 247", "-45448",
                                   " 45,44", "247 * 184 = 45447"])
def test_arithmetic_checker_rejects_anything_else(reply: str) -> None:
    assert not P.check_arithmetic(P.ArithmeticProblem(247, 184, "*", 45448), reply)


def test_arithmetic_problems_are_seeded_multi_digit_and_right() -> None:
    a = P.arithmetic_problems(seed=3)
    assert a == P.arithmetic_problems(seed=3)
    assert a != P.arithmetic_problems(seed=4)
    assert len(a) == 20
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    for p in a:
        assert p.answer == ops[p.op](p.a, p.b)
        assert p.a >= 10 and p.b >= 10 and p.answer > 0
        assert p.prompt.startswith(P.ARITHMETIC_PREAMBLE) and p.prompt.endswith(f"{p.a} {p.op} {p.b} =")
    products = [p for p in a if p.op == "*" and 100 <= p.a <= 999 and 100 <= p.b <= 999]
    assert len(products) >= 5  # 247 × 184 style problems
    assert {p.op for p in a} == {"+", "-", "*"}


# -- needle ---------------------------------------------------------------------------------------


def test_needle_texts_are_the_same_for_the_same_seed() -> None:
    filler = C.bundled_text_path().read_text()
    first = P.needle_cases(7, filler, 3000, (0.1, 0.5, 0.9))
    again = P.needle_cases(7, filler, 3000, (0.1, 0.5, 0.9))
    other = P.needle_cases(8, filler, 3000, (0.1, 0.5, 0.9))
    assert first == again
    assert [c.prompt for c in first] != [c.prompt for c in other]
    assert len({c.value for c in first}) == 3 and len({c.colour for c in first}) == 3


def test_needle_sits_at_its_depth_and_is_asked_for() -> None:
    filler = C.bundled_text_path().read_text()
    for case in P.needle_cases(1, filler, 6000, (0.0, 0.25, 0.5, 0.75, 1.0)):
        assert case.prompt.count(case.needle) == 1
        hay = case.prompt[: case.prompt.index("\n\nQuestion:")]
        where = hay.index(case.needle) / len(hay)
        assert abs(where - case.depth) < 0.08, (case.depth, where)
        assert case.prompt.endswith(f"What is the secret number of the {case.colour} door?\n"
                                    f"Answer: The secret number of the {case.colour} door is")
        assert 5000 < len(hay) < 6200


def test_needle_checker() -> None:
    case = P.NeedleCase(0.5, "red", 48213, "…")
    assert P.check_needle(case, " 48213.")
    assert P.check_needle(case, " 48,213")
    assert not P.check_needle(case, " 48231.")
    assert not P.check_needle(case, " the red one")
    with pytest.raises(ValueError):
        P.needle_cases(1, "text", 100, (1.5,))


# -- scoring --------------------------------------------------------------------------------------


def _logits(rng: np.random.Generator, n: int = 24, vocab: int = 3001, spread: float = 6.0) -> np.ndarray:
    return (rng.standard_normal((n, vocab)) * spread).astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_encoding_is_llama_cpps_layout() -> None:
    rng = np.random.default_rng(0)
    L = _logits(rng, vocab=1001)
    rows = C.encode_logprobs(L)
    assert rows.dtype == np.uint16 and rows.shape == (L.shape[0], 2 * ((1001 + 1) // 2) + 4)
    head = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    mx, mn = L.max(axis=1), np.maximum(L.min(axis=1), L.max(axis=1) - 16)
    assert np.allclose(head[:, 0], (mx - mn) / 65535)
    exact = _log_softmax(L)
    decoded = head[:, :1] * rows[:, 4:4 + 1001].astype(np.float32) + head[:, 1:2]
    live = L > mn[:, None]
    # above the floor: exact to half a quantization step; at or below it: the floor's log-prob
    assert np.all(np.abs(decoded - exact)[live] <= (head[:, :1] / 2 + 1e-5).repeat(1001, axis=1)[live])
    assert np.all(decoded[~live] == np.broadcast_to(head[:, 1:2], decoded.shape)[~live])
    assert rows[np.arange(L.shape[0]), 4 + L.argmax(axis=1)].min() == 65535


def test_a_model_scored_against_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    L = _logits(rng)
    targets = rng.integers(0, L.shape[1], size=L.shape[0])
    sums = C.ScoreSums()
    C.score_rows(L, C.encode_logprobs(L), targets, sums)
    assert sums.kld == 0.0
    assert sums.same_top == sums.count == L.shape[0]
    nll = -_log_softmax(L)[np.arange(L.shape[0]), targets]
    assert math.isclose(sums.ppl, math.exp(nll.mean()), rel_tol=1e-5)


def test_kld_top1_and_ppl_match_their_definitions() -> None:
    rng = np.random.default_rng(2)
    ref = _logits(rng, n=40, spread=3.0)
    var = ref + (rng.standard_normal(ref.shape) * 0.7).astype(np.float32)
    # plausible next tokens (among the reference's 20 likeliest), as in real text
    targets = np.argsort(ref, axis=1)[np.arange(ref.shape[0]), -rng.integers(1, 21, size=ref.shape[0])]
    sums = C.ScoreSums()
    C.score_rows(var, C.encode_logprobs(ref), targets, sums)
    lp_ref, lp_var = _log_softmax(ref), _log_softmax(var)
    keep = lp_ref > -16  # llama.cpp sums over the reference tokens above -16
    kld = (np.where(keep, np.exp(lp_ref) * (lp_ref - lp_var), 0.0)).sum(axis=1).mean()
    assert kld > 0.05
    assert math.isclose(sums.mean_kld, kld, rel_tol=2e-3)
    assert math.isclose(sums.top1, float((ref.argmax(axis=1) == var.argmax(axis=1)).mean()), abs_tol=1e-9)
    nll = -lp_var[np.arange(ref.shape[0]), targets]
    assert math.isclose(sums.ppl, math.exp(nll.mean()), rel_tol=1e-5)
    nll_base = -lp_ref[np.arange(ref.shape[0]), targets]
    assert math.isclose(sums.ppl_base, math.exp(nll_base.mean()), rel_tol=1e-3)


def test_rows_are_scored_in_blocks_the_same_as_at_once() -> None:
    rng = np.random.default_rng(3)
    ref = _logits(rng, n=150, vocab=517)
    var = ref + (rng.standard_normal(ref.shape) * 0.3).astype(np.float32)
    targets = rng.integers(0, 517, size=150)
    whole, parts = C.ScoreSums(), C.ScoreSums()
    base = C.encode_logprobs(ref)
    C.score_rows(var, base, targets, whole)
    for s in (0, 64, 100):
        e = {0: 64, 64: 100, 100: 150}[s]
        C.score_rows(var[s:e], base[s:e], targets[s:e], parts)
    assert whole.count == parts.count == 150
    assert math.isclose(whole.kld, parts.kld, rel_tol=1e-9) and whole.same_top == parts.same_top
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = C.ScoreSums()
        C.score_rows(var, base, targets, threaded, pool=pool)
    assert threaded == whole  # the same sums, added in the same order
