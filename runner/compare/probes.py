"""Task probes where quantization is known to hurt: exact arithmetic and needle-in-a-haystack recall.

Everything here is plain text and integers: the problems, the prompts and the checkers. The
prompts are completions (few-shot arithmetic, a haystack followed by a half-written answer), so
they work the same for base and instruct models and need no chat template. They are meant to be
run greedily (temperature 0); the same seed always gives the same problems and the same texts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ARITHMETIC_PREAMBLE = "Work out each sum exactly.\n23 * 41 = 943\n508 + 1275 = 1783\n9021 - 467 = 8554\n"
"""Few-shot lines shown before every arithmetic problem; they fix the answer format."""

NEEDLE_COLOURS = (
    "red", "blue", "green", "yellow", "purple", "orange", "silver", "golden",
    "black", "white", "crimson", "violet",
)

_NUMBER = re.compile(r"-?\d[\d,]*")


@dataclass(frozen=True)
class ArithmeticProblem:
    """One multi-digit problem, such as ``247 * 184``, with its exact answer."""

    a: int
    b: int
    op: str  # "+", "-" or "*"
    answer: int

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def prompt(self) -> str:
        """The completion prompt: the few-shot preamble, then ``a op b =``."""
        return f"{ARITHMETIC_PREAMBLE}{self.expression} ="


@dataclass(frozen=True)
class NeedleCase:
    """A fact hidden at ``depth`` (0 = start, 1 = end) of a filler text, and the question about it."""

    depth: float
    colour: str
    value: int
    prompt: str

    @property
    def needle(self) -> str:
        return needle_sentence(self.colour, self.value)


def arithmetic_problems(seed: int, count: int = 20) -> tuple[ArithmeticProblem, ...]:
    """``count`` seeded multi-digit problems: 3×3-digit products, 2×4-digit products, 4/5-digit sums and differences."""
    rng = random.Random(f"arithmetic:{seed}")
    problems: list[ArithmeticProblem] = []
    kinds = ("mul33", "add", "mul24", "sub")
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "mul33":
            a, b = rng.randint(101, 999), rng.randint(101, 999)
            problems.append(ArithmeticProblem(a, b, "*", a * b))
        elif kind == "mul24":
            a, b = rng.randint(12, 99), rng.randint(1001, 9999)
            problems.append(ArithmeticProblem(a, b, "*", a * b))
        elif kind == "add":
            a, b = rng.randint(1001, 99999), rng.randint(1001, 99999)
            problems.append(ArithmeticProblem(a, b, "+", a + b))
        else:
            a = rng.randint(10001, 99999)
            b = rng.randint(1001, a - 1)
            problems.append(ArithmeticProblem(a, b, "-", a - b))
    return tuple(problems)


def first_integer(reply: str) -> int | None:
    """The first integer on the first non-empty line of a reply (``" 45,448."`` -> 45448).

    When that line has an ``=`` (the model repeated the problem), the first integer after the last ``=``.
    """
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    if "=" in line:
        line = line.rsplit("=", 1)[-1]
    match = _NUMBER.search(line)
    if match is None:
        return None
    digits = match.group(0).rstrip(",")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+|-?\d+", digits):
        return int(digits.replace(",", ""))
    return int(digits.split(",")[0])  # "1,2,3": a list, the first item is the number


def check_arithmetic(problem: ArithmeticProblem, reply: str) -> bool:
    """True when the first number the model wrote is exactly the answer."""
    return first_integer(reply) == problem.answer


def needle_sentence(colour: str, value: int) -> str:
    return f"The secret number of the {colour} door is {value}."


def needle_question(colour: str) -> str:
    return f"\n\nQuestion: What is the secret number of the {colour} door?\nAnswer: The secret number of the {colour} door is"


def _boundary(text: str, at: int) -> int:
    """The nearest sentence or line end at or after ``at`` (or ``at`` itself when there is none)."""
    if at <= 0:
        return 0
    if at >= len(text):
        return len(text)
    best = None
    for sep in (". ", "! ", "? ", "\n"):
        j = text.find(sep, at)
        if j != -1:
            j += len(sep)
            best = j if best is None else min(best, j)
    return best if best is not None and best <= len(text) else at


def haystack(filler: str, n_chars: int) -> str:
    """The filler text repeated as needed and cut to ``n_chars`` at a line or sentence end."""
    filler = filler.strip()
    if not filler:
        raise ValueError("the filler text is empty")
    text = filler
    while len(text) < n_chars:
        text += "\n\n" + filler
    cut = text.rfind("\n", 0, n_chars + 1)
    if cut < n_chars // 2:
        cut = n_chars
    return text[:cut]


def needle_prompt(filler: str, n_chars: int, depth: float, colour: str, value: int) -> str:
    """A haystack of about ``n_chars`` with the needle at ``depth``, then the question and a half-written answer."""
    hay = haystack(filler, n_chars)
    at = _boundary(hay, int(round(depth * len(hay))))
    before, after = hay[:at], hay[at:]
    sep_before = "" if not before or before.endswith((" ", "\n")) else " "
    sep_after = "" if not after or after.startswith((" ", "\n")) else " "
    return f"{before}{sep_before}{needle_sentence(colour, value)}{sep_after}{after}{needle_question(colour)}"


def needle_cases(seed: int, filler: str, n_chars: int, depths: tuple[float, ...]) -> tuple[NeedleCase, ...]:
    """One case per depth, each with its own seeded colour and five-digit number."""
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError("needle depths must lie between 0 and 1")
    rng = random.Random(f"needle:{seed}")
    colours = rng.sample(NEEDLE_COLOURS, k=min(len(depths), len(NEEDLE_COLOURS)))
    cases = []
    for i, depth in enumerate(depths):
        colour = colours[i % len(colours)]
        value = rng.randint(10000, 99999)
        cases.append(NeedleCase(depth, colour, value, needle_prompt(filler, n_chars, depth, colour, value)))
    return tuple(cases)


def check_needle(case: NeedleCase, reply: str) -> bool:
    """True when the first number the model wrote is exactly the hidden value."""
    return first_integer(reply) == case.value
