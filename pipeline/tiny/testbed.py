"""The experiment testbed: a problem family built to have ExPO's premise, and the model trained on it.

The premise (METHOD.md): the model can reason its way to the answer when the answer is in the prompt,
but mostly does not without it. Here that holds by construction, for a reason that is learnable:

- **The family**: a start digit and 2-4 distinct digits to add; the question asks for the last digit
  of the total. The model's own procedure carries one digit from step to step ("7 + 8 = 15, last
  digit 5."), each step a fact a two-layer model can learn. The level is the number of additions.
- **The systematic failure**: after the plain CoT prompt, the model was trained to stop one addition
  early in most examples (``cot_full_fraction`` of them are complete). Its answer is then wrong
  every time, since every added digit is 1-9. After the answer-hinted prompt it always does every
  step. So a self-explanation is the model's own procedure, done to the end: an in-distribution
  positive that carries exactly what the plain CoT lacks.
- **Expert solutions in another style**: one line that sums everything at once ("3 + 4 + 8 + 5 = 20"),
  correct but never seen in training, and built on a multi-digit sum the model never learned. They
  are the out-of-distribution positives of the paper's expert-DPO baseline.

This is a designed testbed: it shows that the pipeline and the trainers carry the signal from
generation to held-out accuracy, not that ExPO works on real models. The problem files
(``data/problems/testbed-{train,heldout}.jsonl``) are written by :func:`write_problem_files`, held-out
questions first, and no training question repeats one of them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.prompts import PromptTemplate
from pipeline.tiny.build import DEFAULT_TINY_MODEL_DIR, TinyRecipe

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas"]
ITEMS = ["apples", "marbles", "books", "stamps", "coins", "cards", "shells", "beads"]
DEFAULT_TESTBED_MODEL_DIR = DEFAULT_TINY_MODEL_DIR.parent / "testbed-model"
LEVELS = (2, 3, 4)  # additions per problem; the level of the problem


@dataclass(frozen=True)
class ChainProblem:
    start: int
    addends: tuple[int, ...]
    wording: int
    name: str
    item: str

    @property
    def level(self) -> int:
        return len(self.addends)

    @property
    def answer(self) -> str:
        return str((self.start + sum(self.addends)) % 10)

    @property
    def question(self) -> str:
        first, rest = self.addends[0], self.addends[1:]
        if self.wording == 0:
            tail = "".join(f", then {a}" for a in rest)
            return f"Start with {self.start}. Add {first}{tail}. What is the last digit of the result?"
        tail = "".join(f", then {a} more" for a in rest)
        return (
            f"{self.name} has {self.start} {self.item}, then gets {first} more{tail}. "
            f"What is the last digit of the number of {self.item} {self.name} has?"
        )

    def own_solution(self, complete: bool = True) -> str:
        """The model's own procedure, one carried digit per line; ``complete=False`` is its
        systematic plain-prompt failure: the last addition left out."""
        steps, cur = [], self.start
        addends = self.addends if complete else self.addends[:-1]
        for a in addends:
            total = cur + a
            steps.append(f"{cur} + {a} = {total}, last digit {total % 10}.")
            cur = total % 10
        return "\n".join(steps) + f"\nThe final answer is \\boxed{{{cur}}}."

    def expert_solution(self) -> str:
        total = self.start + sum(self.addends)
        terms = " + ".join(str(x) for x in (self.start, *self.addends))
        return f"Summing all at once, ${terms} = {total}$, whose units digit is $\\boxed{{{total % 10}}}$."


def chain_problem(rng: random.Random, level: int | None = None) -> ChainProblem:
    """Distinct digits (start and addends), so a step can find the next addend by the one before it."""
    k = level if level is not None else rng.choice(LEVELS)
    digits = rng.sample(range(1, 10), k + 1)
    return ChainProblem(digits[0], tuple(digits[1:]), rng.randrange(2), rng.choice(NAMES), rng.choice(ITEMS))


def testbed_examples(
    n: int, seed: int, template: PromptTemplate, cot_full_fraction: float, exclude: frozenset[str] = frozenset()
) -> list[tuple[list[dict[str, str]], str, str]]:
    """(prompt messages, response, answer), alternating the plain CoT prompt (complete with
    probability ``cot_full_fraction``, one addition short otherwise) and the hinted prompt (always
    complete). Questions in ``exclude`` (the experiment's held-out ones) are never used."""
    rng = random.Random(seed)
    out: list[tuple[list[dict[str, str]], str, str]] = []
    for i in range(n):
        p = chain_problem(rng)
        while p.question in exclude:
            p = chain_problem(rng)
        if i % 2 == 0:
            complete = rng.random() < cot_full_fraction
            out.append((template.messages("cot", p.question), p.own_solution(complete), p.answer))
        else:
            out.append((template.messages("explanation", p.question, p.answer), p.own_solution(), p.answer))
    return out


@dataclass(frozen=True)
class TestbedRecipe(TinyRecipe):
    """The tiny model's recipe on the testbed family; the shared fields mean what they mean there."""

    recipe_version: ClassVar[str] = "testbed-1"
    seed: int = 2026
    n_train: int = 48000
    vocab_size: int = 384
    steps: int = 1500
    max_len: int = 160
    n_eval: int = 100
    cot_full_fraction: float = 0.3

    def examples(self, n: int, seed: int, template: PromptTemplate) -> list[tuple[list[dict[str, str]], str, str]]:
        heldout, _ = split_problems()
        exclude = frozenset(p.question for p in heldout)
        return testbed_examples(n, seed, template, self.cot_full_fraction, exclude)


def _row(p: ChainProblem) -> dict[str, Any]:
    # MATH's own format: the answer is the solution's last box, the level "Level k".
    return {"problem": p.question, "solution": p.expert_solution(), "level": f"Level {p.level}", "type": "Chains"}


N_TRAIN, N_HELDOUT, SPLIT_SEED = 256, 120, 7


def split_problems(
    n_train: int = N_TRAIN, n_heldout: int = N_HELDOUT, seed: int = SPLIT_SEED
) -> tuple[list[ChainProblem], list[ChainProblem]]:
    """(held-out, training) problems: held-out drawn first, then training problems whose questions
    none of them share (nor each other), balanced over the levels. The model's recipe never trains
    on a held-out question either."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(n: int) -> list[ChainProblem]:
        out: list[ChainProblem] = []
        while len(out) < n:
            p = chain_problem(rng, LEVELS[len(out) % len(LEVELS)])
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
        return out

    heldout = draw(n_heldout)
    return heldout, draw(n_train)


def write_problem_files(out_dir: str | Path) -> list[Path]:
    """``testbed-heldout.jsonl`` and ``testbed-train.jsonl`` under ``out_dir``, in MATH's format."""
    heldout, train = split_problems()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, problems in (("testbed-heldout.jsonl", heldout), ("testbed-train.jsonl", train)):
        path = out / name
        path.write_text("".join(json.dumps(_row(p)) + "\n" for p in problems), encoding="utf-8")
        paths.append(path)
    return paths
