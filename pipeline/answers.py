"""Pure string work on final answers: the last ``\\boxed{}``, GSM8K's ``#### answer``, and the
conservative normalisation that settles exact copies without sympy.

No parsing and no evaluation here: this runs on untrusted text in the main process, so it is plain,
linear-time scanning. Mathematical parsing happens in the verifier's worker processes.
"""

from __future__ import annotations

import re

_TOKENS = re.compile(r"(\\(?:boxed|fbox)(?![A-Za-z]) *)|(\\.)|(\{)|(\})", re.DOTALL)
_BARE_ARG = re.compile(r"[^\s$.,;{}]+")
_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def boxes(text: str) -> list[tuple[int, str]]:
    """(start of the ``\\boxed`` token, content) of every well-formed box, in order of appearance.

    One pass with a brace stack, so adversarial nesting costs linear time. ``\\{`` and ``\\}`` are
    literal braces in LaTeX and do not open or close groups. ``\\boxed 5`` takes the next token, as TeX does.
    """
    found: list[tuple[int, str]] = []
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
                found.append((owner, text[start : m.start()].strip()))
    if pending >= 0:
        _bare(text, pending, pending_start, found)
    found.sort(key=lambda s: s[0])
    return found


def boxed_spans(text: str) -> list[str]:
    """Contents of every well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in order of appearance."""
    return [content for _, content in boxes(text)]


def _bare(text: str, pos: int, start: int, found: list[tuple[int, str]]) -> None:
    token = _BARE_ARG.match(text, pos)
    if token:
        found.append((start, token.group(0)))


def cut_before_answer(text: str) -> str:
    """The text up to its final answer (the last box), for scoring how strongly it leads there."""
    found = boxes(text)
    return text[: found[-1][0]] if found else text


def last_boxed(text: str) -> str | None:
    """The model's final answer by the CoT prompt's own convention: the last box wins."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


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
    """Undo typography that changes no value: thin-space thousands separators, \\dfrac, \\left/\\right."""
    s = text.strip()
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
