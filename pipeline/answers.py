"""Pure string extraction of final answers: the last ``\\boxed{}`` and GSM8K's ``#### answer``.

No parsing and no evaluation here: this runs on untrusted text in the main process, so it is plain,
linear-time scanning. Mathematical parsing happens in the verifier's worker processes.
"""

from __future__ import annotations

import re

_TOKENS = re.compile(r"(\\(?:boxed|fbox)(?![A-Za-z]) *)|(\\.)|(\{)|(\})", re.DOTALL)
_BARE_ARG = re.compile(r"[^\s$.,;{}]+")
_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def boxed_spans(text: str) -> list[str]:
    """Contents of every well-formed ``\\boxed{...}`` / ``\\fbox{...}``, in order of their start.

    One pass with a brace stack, so adversarial nesting costs linear time. ``\\{`` and ``\\}`` are
    literal braces in LaTeX and do not open or close groups. ``\\boxed 5`` takes the next token, as TeX does.
    """
    spans: list[tuple[int, str]] = []
    stack: list[tuple[int, bool]] = []  # (position after "{", opened by a box)
    pending_box = -1  # end of a "\boxed " token whose argument has not started yet
    for m in _TOKENS.finditer(text):
        box, _escaped, opening, closing = m.groups()
        opens_box = False
        if pending_box >= 0:
            opens_box = opening is not None and m.start() == pending_box
            if not opens_box:
                _bare(text, pending_box, spans)
            pending_box = -1
        if box is not None:
            pending_box = m.end()
        elif opening is not None:
            stack.append((m.end(), opens_box))
        elif closing is not None and stack:
            start, is_box = stack.pop()
            if is_box:
                spans.append((start, text[start : m.start()].strip()))
    if pending_box >= 0:
        _bare(text, pending_box, spans)
    spans.sort(key=lambda s: s[0])
    return [s for _, s in spans]


def _bare(text: str, pos: int, spans: list[tuple[int, str]]) -> None:
    token = _BARE_ARG.match(text, pos)
    if token:
        spans.append((pos, token.group(0)))


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
