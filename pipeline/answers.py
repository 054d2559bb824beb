"""Pure string work on final answers: which part of a text is its final answer, GSM8K's
``#### answer``, and the conservative normalisation that settles exact copies without sympy.

No parsing and no evaluation here: this runs on untrusted text in the main process, so it is plain,
linear-time scanning. Mathematical parsing happens in the verifier's worker processes.

The final answer of a text (:func:`read_answer`), the one rule for every reader (the run's
verifier, ``expo-data verify``, the gold of an expert solution, the cut before the answer that
scoring uses, the trainers' reward):

1. The final box group: the last box, together with the boxes just before it that are joined to it
   by nothing but connectives (commas, "and", "or", spacing, math delimiters, a short label such as
   ``y_2 =`` or "for part (a)"). One box stands alone; several are read together as a list, which
   Math-Verify compares as a set (``\\boxed{1}, \\boxed{2}`` for two roots). A box earlier in the
   text, separated by words, never joins or overrides the final one.
2. With the policy ``boxed_or_final``, a stated final answer ("The final answer is $34$",
   "Answer: 9") that comes after the last box, or in a text without one, is read instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A box token may carry a doubled backslash (``\\\\boxed``: an output escaped twice), read as one box.
_TOKENS = re.compile(r"(\\\\?(?:boxed|fbox)(?![A-Za-z]) *)|(\\.)|(\{)|(\})", re.DOTALL)
POLICIES = ("boxed", "boxed_or_final")
_BARE_ARG = re.compile(r"[^\s$.,;{}]+")
_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def boxes(text: str) -> list[tuple[int, str]]:
    """(start of the ``\\boxed`` token, content) of every well-formed box, in order of appearance."""
    return [(start, content) for start, _end, content in box_spans(text)]


def box_spans(text: str) -> list[tuple[int, int, str]]:
    """(start of the ``\\boxed`` token, end of the box, content) of every well-formed box, in order
    of appearance (nested boxes included).

    One pass with a brace stack, so adversarial nesting costs linear time. ``\\{`` and ``\\}`` are
    literal braces in LaTeX and do not open or close groups. ``\\boxed 5`` takes the next token, as TeX does.
    """
    found: list[tuple[int, int, str]] = []
    stack: list[tuple[int, int]] = []  # (position after "{", start of the box token or -1)
    pending = -1  # end of a "\boxed " token whose argument has not started yet
    pending_start = -1
    for m in _TOKENS.finditer(text):
        box, _escaped, opening, closing = m.groups()
        box_start = -1
        if pending >= 0:
            if opening is not None and m.start() == pending:
                box_start = pending_start
            else:
                _bare(text, pending, pending_start, found)
            pending = -1
        if box is not None:
            pending, pending_start = m.end(), m.start()
        elif opening is not None:
            stack.append((m.end(), box_start))
        elif closing is not None and stack:
            start, owner = stack.pop()
            if owner >= 0:
                found.append((owner, m.end(), text[start : m.start()].strip()))
    if pending >= 0:
        _bare(text, pending, pending_start, found)
    elif stack and stack[0][1] >= 0 and text.rstrip().endswith("\\}"):
        # An outermost box left open at the very end, whose text ends in an escaped brace: a model
        # that wrote its closing brace as ``\}``. Read up to it (a box cut off mid-answer, without
        # that ending, stays unread: a truncated number must not pass for a complete one).
        start, owner = stack[0]
        end = len(text.rstrip())
        found.append((owner, end, text[start : end - 2].strip()))
    found.sort(key=lambda s: s[0])
    return found


def boxed_spans(text: str) -> list[str]:
    """Contents of every well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in order of appearance."""
    return [content for _, _, content in box_spans(text)]


def _bare(text: str, pos: int, start: int, found: list[tuple[int, int, str]]) -> None:
    token = _BARE_ARG.match(text, pos)
    if token:
        found.append((start, token.end(), token.group(0)))


def cut_before_answer(text: str) -> str:
    """The text up to its final answer (:func:`read_answer`), for scoring how strongly it leads
    there; the whole text when it has none."""
    reading = read_answer(text)
    return text[: reading.start] if reading else text


def last_boxed(text: str) -> str | None:
    """The model's final answer by the CoT prompt's own convention: the last box wins."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


@dataclass(frozen=True)
class Reading:
    """A text's final answer: what the verifier parses, how it was found, and where it starts."""

    answer: str  # one box's content, several boxes' contents joined by ", ", or a stated answer
    by: str  # "box" | "boxes" | "statement"
    start: int  # where the answer starts in the text (the first box of the group)
    end: int  # where it ends
    parts: tuple[str, ...] = ()  # the boxes read together

    def describe(self) -> str:
        if self.by == "boxes":
            return f"{len(self.parts)} boxes read together: " + " | ".join(self.parts)
        if self.by == "statement":
            return "read from a final-answer statement (no box after it)"
        return "the final box"


# Between two boxes of one answer: connectives, spacing, math delimiters, and at most a short label
# ("y_2 =", "for part (a)"). Anything else (a sentence, "wait, actually") separates them.
MAX_JOIN_CHARS = 60
MAX_GROUP = 20
_DELIMITERS = re.compile(r"\\[()\[\]]|\$|\\\\|\\(?:quad|qquad|[,;:! ])|~|&")
_TEXT_CMD = re.compile(r"\\text\s*\{([^{}]*)\}")
_JOIN_WORD = re.compile(r"(?:and|or|for|part|parts|\(?[a-z0-9]\)|[A-Za-z](?:_\{?\w{1,3}\}?)?\s*=?|=)", re.IGNORECASE)


def _joins(between: str) -> bool:
    if len(between) > MAX_JOIN_CHARS or "\n\n" in between:
        return False
    rest = _DELIMITERS.sub(" ", _TEXT_CMD.sub(r" \1 ", between))
    return all(_JOIN_WORD.fullmatch(word) for word in re.split(r"[\s,;]+", rest) if word)


def final_box_group(text: str) -> list[tuple[int, int, str]]:
    """The boxes that make up the final answer: the last outermost box and the ones joined to it,
    each unwrapped (``\\boxed{\\boxed{5}}`` reads 5)."""
    spans = box_spans(text)
    outer: list[int] = []  # indices of outermost boxes
    for k, span in enumerate(spans):
        if outer and span[0] < spans[outer[-1]][1]:
            continue  # nested inside the previous outermost box
        outer.append(k)
    group = outer[-1:]
    for k in reversed(outer[:-1]):
        if len(group) >= MAX_GROUP or not _joins(text[spans[k][1] : spans[group[0]][0]]):
            break
        group.insert(0, k)
    return [_unwrapped(spans, k) for k in group]


def _unwrapped(spans: list[tuple[int, int, str]], k: int) -> tuple[int, int, str]:
    """Span k, with its content replaced by the innermost box that is all of it, one step per
    level: the next span by start is the only box that can fill its parent exactly."""
    start, end, content = spans[k]
    while k + 1 < len(spans):
        inner = spans[k + 1]
        if inner[1] - inner[0] != len(content) or not content.startswith(("\\boxed", "\\fbox")):
            break
        content, k = inner[2], k + 1
    return start, end, content


# A stated final answer: an anchor, then a math environment, or (after a strong anchor) a short
# plain answer of a few words at most, so that "the answer is: we need to compute..." reads nothing.
_STRONG = re.compile(
    r"(?:final answer|the answer)(?:\s+(?:is|would be|will be))?[\s*_]*[:=]?[\s*_]*|\banswer[\s*_]*[:=][\s*_]*",
    re.IGNORECASE,
)
_WEAK = re.compile(r"\banswer\b\s*", re.IGNORECASE)  # "Answer \[ 9 \]": a math environment only
_MATH_ENV = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_PLAIN = re.compile(r"[^\n]{1,40}?(?=\.\s|\.$|\n|$)")
MAX_PLAIN_WORDS = 4
STATEMENT_WINDOW = 400  # characters after the anchor that may hold a math environment


def _stated_after(text: str, m: re.Match, plain_ok: bool) -> tuple[int, int, str] | None:
    window = text[m.end() : m.end() + STATEMENT_WINDOW]
    env = _MATH_ENV.match(window)
    if env is not None:
        content = next(g for g in env.groups() if g is not None).strip()
        return (m.end() + env.start(), m.end() + env.end(), content) if content else None
    plain = _PLAIN.match(window) if plain_ok else None
    if plain is None:
        return None
    answer = plain.group(0).strip().strip("*_").strip().rstrip(".")
    if not answer or len(answer.split()) > MAX_PLAIN_WORDS:
        return None
    return m.end(), m.end() + plain.end(), answer


MAX_ANCHORS_TRIED = 50  # from the end: the last statement is what counts, and text is untrusted


def stated_answer(text: str, after: int = 0) -> tuple[int, int, str] | None:
    """(start, end, answer) of the last final-answer statement after position ``after``: anchors
    are found in one pass and tried from the last one back, at most ``MAX_ANCHORS_TRIED``."""
    anchors = [(m, True) for m in _STRONG.finditer(text, after)] + [(m, False) for m in _WEAK.finditer(text, after)]
    anchors.sort(key=lambda a: a[0].end(), reverse=True)
    for m, plain_ok in anchors[:MAX_ANCHORS_TRIED]:
        hit = _stated_after(text, m, plain_ok)
        if hit is not None:
            return hit
    return None


def read_answers(text: str) -> dict[str, Reading | None]:
    """The final answer under each policy (one scan of the text serves both)."""
    group = final_box_group(text)
    boxed = None
    if len(group) == 1:
        start, end, content = group[0]
        boxed = Reading(content, "box", start, end)
    elif group:
        parts = tuple(content for _, _, content in group)
        boxed = Reading(", ".join(parts), "boxes", group[0][0], group[-1][1], parts)
    stated = stated_answer(text, group[-1][1] if group else 0)
    final = Reading(stated[2], "statement", stated[0], stated[1]) if stated is not None else boxed
    return {"boxed": boxed, "boxed_or_final": final}


def read_answer(text: str, policy: str = "boxed_or_final") -> Reading | None:
    """The final answer of a text by the rule in this module's docstring; None when it has none."""
    if policy not in POLICIES:
        raise ValueError(f"unknown extraction policy {policy!r}; use one of {', '.join(POLICIES)}")
    return read_answers(text)[policy]


def gold_answer(gold: str) -> str:
    """A gold given as a solution text (it has a box) is read by the same rule as a completion."""
    if "\\boxed" in gold or "\\fbox" in gold:
        reading = read_answer(gold, "boxed")
        if reading is not None:
            return reading.answer
    return gold


def gsm8k_final(answer_field: str) -> str | None:
    """GSM8K's gold: the text after ``####``, with thousands separators kept as written."""
    m = _GSM8K_RE.search(answer_field or "")
    if not m:
        return None
    value = m.group(1).strip()
    return value or None


def strip_gsm8k_calculator(text: str) -> str:
    """GSM8K solutions carry calculator annotations ``<<5*3=15>>``; they are not prose."""
    return re.sub(r"<<[^<>]*>>", "", text)


# ----------------------------------------------------------------------------------------------
# Normalisation: shared by the fast path and the parser input.

_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\ )(?=\d{3}(?!\d))")


def clean_answer(text: str) -> str:
    """Undo typography that changes no value: thin-space thousands separators, \\dfrac, \\left/\\right,
    and a trailing backslash that escapes nothing."""
    s = text.strip()
    while s.endswith("\\") and not s.endswith("\\\\"):
        s = s[:-1].rstrip()
    s = _THOUSANDS.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    return s


def normalise(text: str) -> str:
    """Conservative canonical string: equal strings here are certainly equal answers."""
    s = clean_answer(text)
    s = _SPACING.sub("", s)
    s = s.replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    return s


_INT = re.compile(r"-?\d+")
_INTERVAL = re.compile(r"([\[(])(-?\d+),(-?\d+)([\])])")


def _literal(s: str) -> tuple | None:
    """A normalised answer that is a plain integer, a set of plain integers or an interval with
    integer ends, as a value that compares the way Math-Verify compares it; None for anything else."""
    if _INT.fullmatch(s):
        return ("int", int(s))
    if s.startswith("\\{") and s.endswith("\\}"):
        parts = s[2:-2].split(",")
        if all(_INT.fullmatch(p) for p in parts):
            return ("set", frozenset(int(p) for p in parts))
        return None
    m = _INTERVAL.fullmatch(s)
    if m and m.group(1) + m.group(4) in ("[]", "[)", "(]"):  # "(a,b)" could be a point or a tuple
        return ("interval", m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))
    return None


def fast_verdict(gold: str, extracted: str) -> bool | None:
    """True or False when plain string work settles it, None when sympy must decide: equal
    normalised strings, or two integers, two integer sets, two integer-bounded intervals."""
    g, e = normalise(gold), normalise(extracted)
    if g == e:
        return True
    a, b = _literal(g), _literal(e)
    if a is None or b is None or a[0] != b[0]:
        return None
    return a == b
