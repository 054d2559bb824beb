"""Synthetic problems for the tiny model: each generator returns (question, answer, reasoning
lines); the last reasoning line ends in "= answer", which makes copying a hinted answer far more
reliable. The mix (arithmetic too wide to memorise, single-digit facts it can memorise, MATH-looking
questions only the hint makes answerable) gives the ExPO situation in miniature.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction

from pipeline.prompts import PromptTemplate

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemal", "Lena"]
ITEMS = ["apples", "marbles", "books", "stamps", "coins", "cards", "shells", "pencils", "tickets", "beads"]
WORDS = [
    "Let",
    "Find",
    "Compute",
    "Suppose",
    "Determine",
    "the",
    "value",
    "of",
    "a",
    "real",
    "number",
    "function",
    "such",
    "that",
    "for",
    "all",
    "integers",
    "points",
    "triangle",
    "circle",
    "radius",
    "area",
    "sum",
    "product",
    "probability",
    "sequence",
    "polynomial",
    "roots",
    "equation",
    "line",
    "angle",
    "positive",
    "least",
    "greatest",
    "common",
    "divisor",
    "digits",
    "remainder",
    "when",
    "divided",
    "by",
    "is",
    "and",
    "if",
    "in",
    "with",
    "what",
    "how",
    "many",
    "ways",
    "can",
    "be",
]
LATEX_BITS = [
    "$x^2 + {a}x + {b} = 0$",
    "$f(x) = {a}x - {b}$",
    "$\\frac{{{a}}}{{{b}}}$",
    "$\\sqrt{{{a}}}$",
    "$\\triangle ABC$",
    "$AB = {a}$",
    "${a} \\cdot {b}$",
    "$n \\geq {a}$",
    "$\\log_{{{a}}} {b}$",
    "$\\pi r^2$",
    "$\\binom{{{a}}}{{{b}}}$",
    "$y = {a}x + {b}$",
    "$\\angle A = {a}^\\circ$",
    "$\\{{1, 2, \\ldots, {a}\\}}$",
    "$|x - {a}| < {b}$",
    "$\\dfrac{{{a}}}{{{b}}}$",
    "$x_{{{a}}}$",
]


def _frac_latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _num(rng: random.Random) -> int:
    # Wide ranges: a tiny model can then neither memorise results nor compute them.
    return rng.choice([rng.randint(2, 99), rng.randint(10, 999), rng.randint(100, 9999)])


def _gen_add(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = _num(rng), _num(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a}+{b}$?",
            f"Compute ${a} + {b}$.",
            f"Find the sum of ${a}$ and ${b}$.",
            f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
        ]
    )
    return q, str(a + b), [f"We add {a} and {b}.", f"{a} + {b} = {a + b}"]


def _gen_sub(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = _num(rng), _num(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a}-{b}$?",
            f"Compute ${a} - {b}$.",
            f"{name} had {max(a, b)} {item} and gave away {min(a, b)}. How many {item} are left?",
        ]
    )
    if "gave away" in q:
        a, b = max(a, b), min(a, b)
    return q, str(a - b), [f"We subtract {b} from {a}.", f"{a} - {b} = {a - b}"]


def _gen_mul(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    item = rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a} \\times {b}$?",
            f"Compute ${a} \\cdot {b}$.",
            f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?",
        ]
    )
    return q, str(a * b), [f"We multiply {a} by {b}.", f"{a} \\times {b} = {a * b}"]


def _gen_div(rng: random.Random) -> tuple[str, str, list[str]]:
    b, c = rng.randint(2, 40), rng.randint(2, 99)
    a = b * c
    item = rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a} \\div {b}$?",
            f"Compute $\\frac{{{a}}}{{{b}}}$.",
            f"{a} {item} are shared equally among {b} children. How many {item} does each child get?",
        ]
    )
    return q, str(c), [f"We divide {a} by {b}.", f"{a} \\div {b} = {c}"]


def _gen_two_step(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 500)
    if rng.random() < 0.5:
        q = rng.choice([f"What is ${a} \\cdot {b} + {c}$?", f"Evaluate ${a} \\times {b} + {c}$."])
        ans = a * b + c
        steps = [f"First {a} \\times {b} = {a * b}.", f"Then {a * b} + {c} = {ans}"]
    else:
        q = rng.choice([f"What is $({a} + {b}) \\cdot {c}$?", f"Evaluate $({a}+{b}) \\times {c}$."])
        ans = (a + b) * c
        steps = [f"First {a} + {b} = {a + b}.", f"Then {a + b} \\times {c} = {ans}"]
    return q, str(ans), steps


def _gen_fraction(rng: random.Random) -> tuple[str, str, list[str]]:
    x = Fraction(rng.randint(1, 19), rng.randint(2, 20))
    y = Fraction(rng.randint(1, 19), rng.randint(2, 20))
    op = rng.choice(["+", "-", "\\cdot"])
    value = x + y if op == "+" else x - y if op == "-" else x * y
    q = rng.choice(
        [
            f"Compute ${_frac_latex(x)} {op} {_frac_latex(y)}$. Express your answer as a common fraction.",
            f"What is ${_frac_latex(x)} {op} {_frac_latex(y)}$?",
        ]
    )
    ans = _frac_latex(value)
    return q, ans, ["We combine the fractions and simplify.", f"{_frac_latex(x)} {op} {_frac_latex(y)} = {ans}"]


def _gen_linear(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b, c = rng.randint(2, 30), rng.randint(-99, 99), rng.randint(-200, 200)
    x = Fraction(c - b, a)
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    q = rng.choice([f"Solve for $x$: ${a}x {bs} = {c}$.", f"If ${a}x {bs} = {c}$, what is $x$?"])
    ans = _frac_latex(x)
    return q, ans, [f"We get {a}x = {c - b}.", f"x = {c - b} / {a} = {ans}"]


def _random_answer(rng: random.Random) -> str:
    """Answer strings in the formats MATH uses, so the copy skill covers them."""
    a, b = rng.randint(1, 99), rng.randint(2, 30)
    if rng.random() < 0.4:  # most MATH answers are plain integers
        return str(rng.choice([rng.randint(0, 20), rng.randint(1, 999)]))
    kind = rng.randrange(16)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}"
    if kind == 1:
        return f"{rng.randint(2, 9)}\\sqrt{{{b}}}"
    if kind == 2:
        return f"\\frac{{\\sqrt{{{b}}}}}{{{rng.randint(2, 9)}}}"
    if kind == 3:
        return f"{a}\\pi"
    if kind == 4:
        return f"({rng.randint(-20, 20)},{rng.randint(-20, 20)})"
    if kind == 5:
        lo, hi = sorted(rng.sample(range(-30, 30), 2))
        return rng.choice("[(") + f"{lo},{hi}" + rng.choice("])")
    if kind == 6:
        return rng.choice([f"(-\\infty, {a}]", f"[{a}, \\infty)", f"(-\\infty,{-a})"])
    if kind == 7:
        vals = sorted(rng.sample(range(-20, 40), rng.randint(2, 4)))
        return rng.choice(["\\{" + ",".join(map(str, vals)) + "\\}", ", ".join(map(str, vals))])
    if kind == 8:
        return f"{a}^\\circ"
    if kind == 9:
        return f"\\text{{{rng.choice(NAMES)}}}"
    if kind == 10:
        return f"\\text{{({rng.choice('ABCDE')})}}"
    if kind == 11:
        return f"{a}.{rng.randint(1, 99)}"
    if kind == 12:
        return f"x^2{rng.choice('+-')}{a}x{rng.choice('+-')}{b}"
    if kind == 13:
        return rng.choice([f"{a}\\%", f"\\${a}", f"{a}.{rng.randint(10, 99)}\\%"])
    if kind == 14:
        return str(-rng.randint(1, 999))
    return f"{rng.randint(1, 9)},{rng.randint(100, 999)}"


def _gen_generic(rng: random.Random) -> tuple[str, str, list[str]]:
    """A MATH-looking question the model cannot solve; only the hint makes it answerable."""
    sentences = []
    for _ in range(rng.randint(1, 3)):
        words = rng.sample(WORDS, rng.randint(4, 12))
        bits = [
            rng.choice(LATEX_BITS).format(a=rng.randint(1, 99), b=rng.randint(1, 99)) for _ in range(rng.randint(1, 2))
        ]
        parts = words + bits
        rng.shuffle(parts)
        sentences.append(" ".join(parts).capitalize() + rng.choice([".", "?", "."]))
    q = " ".join(sentences)
    ans = _random_answer(rng)
    steps = [
        rng.choice(["We set up the problem.", "We use the given conditions.", "We simplify step by step."]),
        f"Working it out, the result is = {ans}",
    ]
    return q, ans, steps


def _gen_fact(rng: random.Random) -> tuple[str, str, list[str]]:
    """Single-digit facts (81 per operation): few enough to memorise, so the plain CoT is right on the
    easiest problems, as a real model is on easy MATH, and GRPO groups get mixed rewards."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.randrange(4)
    if op == 0:
        return f"What is ${a}+{b}$?", str(a + b), [f"We add {a} and {b}.", f"{a} + {b} = {a + b}"]
    if op == 1:
        return f"Compute ${a} \\times {b}$.", str(a * b), [f"We multiply {a} by {b}.", f"{a} \\times {b} = {a * b}"]
    if op == 2:
        return f"What is ${a * b} \\div {b}$?", str(a), [f"We divide {a * b} by {b}.", f"{a * b} \\div {b} = {a}"]
    return f"What is ${a + b}-{b}$?", str(a), [f"We subtract {b} from {a + b}.", f"{a + b} - {b} = {a}"]


GENERATORS: list[Callable[[random.Random], tuple[str, str, list[str]]]] = [
    _gen_add,
    _gen_sub,
    _gen_mul,
    _gen_div,
    _gen_two_step,
    _gen_fraction,
    _gen_linear,
    _gen_fact,
    _gen_fact,
    _gen_fact,
    _gen_generic,
    _gen_generic,
    _gen_generic,
]


def synth_problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, response); the response ends with the boxed answer."""
    question, answer, steps = rng.choice(GENERATORS)(rng)
    response = "\n".join(steps) + f"\nThe final answer is \\boxed{{{answer}}}."
    return question, answer, response


def synth_examples(n: int, seed: int, template: PromptTemplate) -> list[tuple[list[dict[str, str]], str, str]]:
    """(prompt messages, response, answer), alternating CoT and self-explanation prompts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, answer, response = synth_problem(rng)
        kind = "cot" if i % 2 == 0 else "explanation"
        out.append((template.messages(kind, question, answer), response, answer))
    return out
