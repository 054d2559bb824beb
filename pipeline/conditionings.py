"""What an explanation-like request is conditioned on: the answer-conditioned family as data.

ExPO's self-explanation sees the gold answer; QuestA (``partial_solution``) sees the first part of
the expert solution; NuRL (``abstract_hint``) sees a short hint the model itself wrote from the
question and the gold; STaR's rationalization (``star``) sees the answer in STaR's own form; ``none``
sees nothing more than the plain prompt (resampling with the same budget: the control).

Every conditioning goes through the prompt template's one ``{hint}`` slot, so a conditioned prompt
is the plain CoT prompt plus exactly the inserted text, as ExPO requires of its explanations. The
inserts are versioned like the templates (a version string and a content digest recorded in
run.json), and each text records its conditioning in the ``conditioning`` column.

Wordings (METHOD.md, "The answer-conditioned family"):
- QuestA appends ``## Hint.`` and a character prefix of the reference solution to the problem
  (foreverlasting1202/QuestA, ``add_prefix.py``); we cut the prefix on a step boundary instead of a
  character, never inside LaTeX, and never through the step that states the answer.
- STaR puts the answer in parentheses after the question ("Q: ... (72)").
- NuRL's exact prompts are not published in the sources we could read; ours ask for the core idea
  and forbid the answer, and every hint is checked before use (:func:`hint_problem`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pipeline.config import ConditioningConfig, RunConfig
from pipeline.leaks import detect_leak
from pipeline.prompts import Message, PromptTemplate


@dataclass(frozen=True)
class Insert:
    """A versioned text for the prompt template's ``{hint}`` slot; ``{answer}``, ``{partial}`` or
    ``{hint}`` in it are filled by plain replacement (never ``str.format``: the texts are untrusted)."""

    version: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.version}\0{self.text}".encode()).hexdigest()[:12]

    def fill(self, **values: str) -> str:
        out = self.text
        for key, value in values.items():
            out = out.replace("{" + key + "}", value)
        return out


STAR = Insert("star-v1", "({answer})\n")
QUESTA = Insert("questa-v1", "## Hint. {partial}\n")
NURL = Insert("nurl-v1", "Hint: {hint}\n")
NONE = Insert("none-v1", "")
HINT_REQUEST = Insert(
    "nurl-hint-v1",
    "{question}\n\nThe correct final answer is {answer}.\n\n"
    "Write a short, abstract hint for this problem: the key idea or method a student needs, in one or two "
    'sentences. Do not state the final answer or any intermediate result. Begin with "Hint:".',
)
"""The first request of ``abstract_hint``: question and gold in, a hint out (see :func:`extract_hint`)."""

INSERTS: dict[str, Insert] = {"star": STAR, "partial_solution": QUESTA, "abstract_hint": NURL, "none": NONE}


@dataclass(frozen=True)
class Variant:
    """One conditioning as generation sees it: a ``partial_solution`` entry with a curriculum of
    fractions is one variant per fraction (``name@p``); every other entry is one variant."""

    label: str  # the ``conditioning`` column value
    entry: str  # the entry's name (what build.positives names)
    kind: str
    n: int
    p: float | None
    config: ConditioningConfig

    @property
    def is_default(self) -> bool:
        """ExPO's own explanation: request ids, sample ids and seeds stay what they were before
        conditionings existed, so an existing config writes the same rows."""
        return self.kind == "answer" and self.label == "answer"

    @property
    def sample_tag(self) -> str:
        """The middle part of a sample id (``problem/tag/index``)."""
        return "explanation" if self.is_default else self.label

    def insert(self, template: PromptTemplate) -> Insert:
        if self.kind == "answer":
            return Insert(template.version, template.answer_sentence)
        return INSERTS[self.kind]


def variants(cfg: RunConfig) -> list[Variant]:
    out = []
    for c in cfg.conditionings:
        n = cfg.generation.explanations if c.n is None else c.n
        if c.kind == "partial_solution":
            out += [Variant(f"{c.label}@{p:g}", c.label, c.kind, n, p, c) for p in c.fractions]
        else:
            out.append(Variant(c.label, c.label, c.kind, n, None, c))
    return out


def describe(cfg: RunConfig, template: PromptTemplate) -> dict[str, Any]:
    """Per variant, what run.json records: kind, parameters and the versioned insert."""
    out: dict[str, Any] = {}
    for v in variants(cfg):
        ins = v.insert(template)
        out[v.label] = {"kind": v.kind, "entry": v.entry, "n": v.n, "p": v.p, "version": ins.version}
        out[v.label] |= {"insert": ins.text, "digest": ins.digest}
        if v.kind == "abstract_hint":
            out[v.label]["hint_request"] = {"version": HINT_REQUEST.version, "digest": HINT_REQUEST.digest}
    return out


def digests(cfg: RunConfig, template: PromptTemplate) -> list[str]:
    """What a shard's cache key needs from the conditionings: each variant's insert digest."""
    return [f"{v.label}:{v.n}:{v.insert(template).digest}" for v in variants(cfg)]


# ----------------------------------------------------------------------------------------------
# QuestA's partial solution: cut on a step boundary, never inside LaTeX, never through the answer

_ENV = re.compile(r"\\begin\{([^}]*)\}")
_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_SENTENCE_END = re.compile(r"[.!?][)\"']*(?=\s)")


def math_spans(text: str) -> list[tuple[int, int]]:
    """Half-open spans of LaTeX that must not be cut: ``$..$``, ``$$..$$``, ``\\(..\\)``,
    ``\\[..\\]`` and ``\\begin{env}..\\end{env}``. An unclosed one runs to the end of the text."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        end = None
        if text.startswith("\\begin{", i):
            m = _ENV.match(text, i)
            name = m.group(1) if m else ""
            close = text.find("\\end{" + name + "}", i + 7)
            end = n if close < 0 else close + len(name) + 6
        elif text.startswith("$$", i):
            close = text.find("$$", i + 2)
            end = n if close < 0 else close + 2
        elif c == "$":
            j = i + 1
            while j < n and not (text[j] == "$" and text[j - 1] != "\\"):
                j += 1
            end = min(j + 1, n)
        elif text.startswith("\\[", i) or text.startswith("\\(", i):
            close = text.find("\\]" if text[i + 1] == "[" else "\\)", i + 2)
            end = n if close < 0 else close + 2
        elif c == "\\":
            i += 2  # an escaped character (\$, \\) opens nothing
            continue
        if end is not None:
            spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


def step_boundaries(text: str) -> list[int]:
    """Positions where a step ends: after a sentence's final punctuation or at a line break, never
    inside a LaTeX span. Each is a place a prefix may end."""
    spans = math_spans(text)
    inside = bytearray(len(text) + 1)
    for a, b in spans:
        inside[a:b] = b"\x01" * (b - a)
    cuts = {m.end() for m in _SENTENCE_END.finditer(text) if not inside[m.start()]}
    cuts |= {i for i, ch in enumerate(text) if ch == "\n" and not inside[i]}
    cuts |= {b for _, b in spans if b < len(text) and text[b] == "\n"}
    return sorted(c for c in cuts if 0 < c < len(text))


def _norm(s: str) -> str:
    """Math delimiters and LaTeX spacing out, whitespace collapsed (token boundaries kept)."""
    return " ".join(re.sub(r"\\[,;!: ]|\$", " ", s).split())


def states_answer(text: str, gold: str) -> bool:
    """Whether ``text`` writes the gold answer as a token of its own (not inside a longer number or
    word), or a box: the test every shown text must pass."""
    if _BOX.search(text):
        return True
    g = _norm(gold)
    if not g:
        return False
    body = r"\s*".join(re.escape(part) for part in g.split(" "))
    pattern = r"(?<![\w.])" + body + r"(?![\w]|\.\d)"
    return re.search(pattern, _norm(text)) is not None


@dataclass(frozen=True)
class Cut:
    text: str
    shown: float  # the share of the solution's characters shown


def cut_solution(solution: str, p: float, gold: str) -> Cut | None:
    """The longest prefix of ``solution`` that ends on a step boundary, is at most ``p`` of it in
    characters (QuestA cuts by characters), and ends before the first step that states the gold
    answer or holds a box (the line or equation that reaches the answer, and everything after it).
    None when no such prefix exists (a one-step solution, or one that states the answer at once)."""
    text = solution.strip()
    if not text:
        return None
    bounds = step_boundaries(text)
    starts = [0, *bounds]
    limit = len(text)
    for start, stop in zip(starts, [*bounds, len(text)], strict=True):
        if states_answer(text[start:stop], gold):
            limit = start
            break
    else:
        limit = starts[-1]  # no step names the answer: the last step reaches it all the same
    budget = p * len(text)
    best = [b for b in bounds if b <= limit and b <= budget and text[:b].strip()]
    if not best:
        return None
    shown = text[: best[-1]].rstrip()
    return Cut(shown, round(len(shown) / len(text), 4))


# ----------------------------------------------------------------------------------------------
# NuRL's abstract hint


def hint_request(question: str, gold: str, system: str | None) -> list[Message]:
    user = HINT_REQUEST.fill(question=question, answer=gold)
    return [*([] if system is None else [{"role": "system", "content": system}]), {"role": "user", "content": user}]


_HINT_LABEL = re.compile(r"\bhint\s*[:.]\s*", re.IGNORECASE)


def extract_hint(text: str) -> str:
    """The hint in a completion: what follows the last "Hint:" (the request asks for that label),
    else the whole text, trimmed."""
    labels = list(_HINT_LABEL.finditer(text or ""))
    body = text[labels[-1].end() :] if labels else (text or "")
    return body.strip().strip("*").strip()


def hint_problem(hint: str, gold: str, question: str, finish_reason: str) -> str | None:
    """Why a hint cannot be shown, or None: a hint that carries the answer turns NuRL's nudge into
    ExPO's answer hint, so the gold itself and every pattern of our leak detector are refused."""
    if not hint:
        return "empty"
    if finish_reason != "stop":
        return "truncated"
    if _BOX.search(hint):
        return "boxed"
    if states_answer(hint, gold):
        return "states_answer"
    leak = detect_leak(hint, None, question)
    return f"leak:{leak.reason}" if leak else None
