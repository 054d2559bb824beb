"""Hint-leak detection: explanations that lean on having been shown the answer.

At training time the answer sentence is removed from the prompt, so an explanation saying "we are
told the answer is 12" reads as nonsense and teaches the model to cite a hint that is not there.
Such explanations are flagged (kept in ``samples``, excluded from training sets by default).

The patterns look for the *answer* (or hint, or expected result) being given, told or provided, not
for premises: "we are given that x + 3 = 5" is the problem speaking, not the hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSWER = r"(?:final\s+|correct\s+|right\s+|expected\s+|target\s+|provided\s+|given\s+|known\s+)*(?:answer|result|solution|value)"

# (reason code, pattern). Order matters: the first match names the reason.
_PATTERNS: list[tuple[str, str]] = [
    ("hint_sentence", r"the\s+correct\s+final\s+answer\s+is\b"),
    ("mentions_hint", r"\b(?:the|this|a)\s+hint\b|\bhinted\b"),
    (
        "told_answer",
        r"\b(?:we(?:'re|\s+are|\s+were)|i(?:'m|\s+am|\s+was)|you(?:'re|\s+are)|it\s+is|it's)\s+"
        r"(?:told|given|provided|shown|informed)\s+(?:that\s+)?(?:the\s+)?" + _ANSWER,
    ),
    (
        "given_answer",
        r"\b(?:given|provided|stated|supplied|known|expected)\s+(?:final\s+|correct\s+)?(?:answer|result|solution)\b"
        r"|\b(?:answer|result)\s+(?:was|is|has\s+been)\s+(?:given|provided|stated|supplied)\b"
        r"|\b(?:answer|result)\s+(?:provided|given|stated|supplied)\s+(?:in|by)\s+the\b"
        r"|\b(?:answer|result)\s+(?:that\s+)?(?:we|i)\s+(?:were|was|are|have\s+been)\s+"
        r"(?:given|told|provided|shown)\b",
    ),
    (
        "given_that_answer",
        r"\b(?:given|since|because|as)\s+(?:that\s+)?the\s+(?:final\s+|correct\s+)(?:answer|result)\s+(?:is|was|should\s+be)\b",
    ),
    (
        "source_says_answer",
        r"\b(?:problem|question|prompt|statement|task)\s+(?:says|states|tells\s+us|gives|claims|indicates)\s+"
        r"(?:that\s+)?the\s+" + _ANSWER,
    ),
    (
        "as_stated",
        r"\bas\s+(?:stated|given|mentioned|provided|indicated)\s+(?:in|by)\s+the\s+(?:prompt|question|problem|hint)\b",
    ),
    ("according_to_answer", r"\baccording\s+to\s+the\s+(?:given\s+|provided\s+|expected\s+|correct\s+)*answer\b"),
    (
        "working_backwards",
        r"\bwork(?:ing)?\s+backwards?\s+from\s+the\s+(?:given\s+|known\s+|final\s+|correct\s+)*answer\b",
    ),
    (
        "match_expected",
        r"\b(?:to\s+)?(?:match|matches|matching|agree\s+with|consistent\s+with|arrive\s+at|reach|get\s+to)\s+the\s+"
        r"(?:given|expected|provided|correct|known|stated|target)\s+(?:final\s+)?(?:answer|result|value)\b",
    ),
    (
        "already_know_answer",
        r"\bwe\s+(?:already\s+)?know\s+(?:that\s+)?the\s+(?:final\s+|correct\s+)(?:answer|result)\b"
        r"|\bwe\s+already\s+know\s+(?:that\s+)?the\s+(?:answer|result)\b"
        r"|\b(?:we\s+know|knowing)\s+(?:that\s+)?the\s+(?:final\s+|correct\s+)?(?:answer|result)\s+is\b",
    ),
    (
        "answer_should_be",
        r"\bthe\s+(?:final\s+|correct\s+)?answer\s+(?:should|must)\s+be\b[^.]*\bso\s+let'?s\s+(?:verify|check|confirm)",
    ),
    ("need_to_arrive", r"\bsince\s+we\s+(?:need|have|want)\s+to\s+(?:arrive\s+at|reach|get|obtain|end\s+up\s+with)\b"),
]
_COMPILED = [(reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in _PATTERNS]


@dataclass(frozen=True)
class Leak:
    reason: str
    match: str


def detect_leak(explanation: str, hint: str | None = None, question: str | None = None) -> Leak | None:
    """The first hint leak in ``explanation``, or None.

    ``hint`` is the exact hint sentence the model was shown; ``question`` lets a problem that itself
    offers a hint ("Hint: use Pythagoras") be followed without counting as a leak.
    """
    text = explanation or ""
    question_has_hint = bool(question) and re.search(r"\bhint", question, re.IGNORECASE) is not None
    if hint:
        needle = " ".join(hint.split()).lower().rstrip(". ")
        if needle and needle in " ".join(text.split()).lower():
            return Leak("hint_sentence", hint.strip())
    for reason, pattern in _COMPILED:
        if reason == "mentions_hint" and question_has_hint:
            continue
        m = pattern.search(text)
        if m:
            return Leak(reason, m.group(0))
    return None


REASONS = tuple(reason for reason, _ in _PATTERNS)
