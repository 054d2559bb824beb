"""Adapters: one raw row of a MATH-style, GSM8K-style or generic source to problem fields.

A format decides which columns hold the question, the gold answer (a column, the last ``\\boxed{}``
of a solution, or GSM8K's ``#### answer``), the expert solution, level, subject and id;
``problems.columns`` overrides any of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pipeline.answers import gsm8k_final, read_answer, strip_gsm8k_calculator
from pipeline.config import ColumnMap
from pipeline.errors import ProblemsError
from pipeline.text import escaped, storable

MAX_RAW_CHARS = 2000


@dataclass(frozen=True)
class Mapping:
    format: str
    question: str
    answer: str | None  # a column holding the gold directly
    solution: str | None  # MATH: gold = its last \boxed{}; GSM8K: gold after ####
    level: str | None
    subject: str | None
    id: str | None


def _first_present(columns: set[str], *names: str) -> str | None:
    return next((n for n in names if n in columns), None)


def detect_format(columns: set[str]) -> str:
    if {"problem", "solution"} <= columns:
        return "math"
    if {"question", "answer"} <= columns:
        return "gsm8k"
    return "generic"


def resolve_mapping(fmt: str, columns: set[str], override: ColumnMap, source: str) -> Mapping:
    if fmt == "math":
        m = Mapping(
            "math",
            question="problem",
            answer=_first_present(columns, "answer"),
            solution="solution",
            level=_first_present(columns, "level"),
            subject=_first_present(columns, "type", "subject"),
            id=_first_present(columns, "unique_id", "id"),
        )
    elif fmt == "gsm8k":
        m = Mapping("gsm8k", question="question", answer=None, solution="answer", level=None, subject=None, id=None)
    else:
        if not override.question or not (override.answer or override.solution):
            raise ProblemsError(
                f"{source}: cannot tell which columns hold the question and the answer "
                f"(columns: {', '.join(sorted(columns))}); set problems.format to math or gsm8k, or map them "
                "with problems.columns.question and problems.columns.answer (or .solution)"
            )
        m = Mapping("generic", question="", answer=None, solution=None, level=None, subject=None, id=None)
    updates = {k: v for k, v in override.model_dump().items() if v is not None}
    m = Mapping(**{**m.__dict__, **updates})
    needed = [c for c in (m.question, m.answer, m.solution, m.level, m.subject, m.id) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ProblemsError(
            f"{source}: missing column(s) {', '.join(missing)} for format {m.format!r} "
            f"(columns: {', '.join(sorted(columns))}); fix problems.columns or problems.format"
        )
    return m


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any, field_name: str) -> str | None:
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field_name} is a {type(value).__name__}, expected text")
    return str(value)


def parse_level(value: Any, field_name: str = "level") -> int | None:
    """1-5, or None for a level the source does not give or we do not know ("Level 9", "?"). A value
    that cannot be a level at all (a list, a mapping, a boolean) is a type error, for quarantine."""
    if _is_missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{field_name} is a {type(value).__name__}, expected a number or text")
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int):
        return value if 1 <= value <= 5 else None
    m = re.fullmatch(r"\s*(?:level\s*)?([1-5])\s*", str(value), flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def subject_key(subject: str | None) -> str | None:
    """'Counting & Probability' and 'counting_and_probability' are the same subject."""
    if subject is None:
        return None
    s = subject.strip().lower().replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


def raw_json(data: Any) -> str:
    """The source row as JSON for the quarantine table: readable where it can be stored as it is,
    escaped (``\\udcff``) where it holds what UTF-8 cannot encode."""
    try:
        text = json.dumps(data, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(data)
    if storable(text)[1] is not None:
        text = escaped(data, limit=MAX_RAW_CHARS + 1)
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "..."


def map_row(raw: dict[str, Any], m: Mapping) -> dict[str, Any]:
    """Problem fields from one row; raises TypeError/ValueError(reason, detail) for quarantine."""
    question = _text(raw.get(m.question), m.question)
    solution = _text(raw.get(m.solution), m.solution) if m.solution else None
    answer = _text(raw.get(m.answer), m.answer) if m.answer else None
    expert = solution
    if m.format == "gsm8k" and solution is not None:
        if answer is None:
            answer = gsm8k_final(solution)
        prose = strip_gsm8k_calculator(solution.split("####")[0]).strip()
        # End like every other expert solution (and like the prompt asks): with the boxed answer,
        # so expert-chosen DPO rows teach the same answer format as the explanations.
        expert = f"{prose}\nThe final answer is $\\boxed{{{answer.strip()}}}$." if prose and answer else None
    elif answer is None and solution is not None:
        # The solution's final box group, by the rule every answer is read by (boxes only: a
        # reference solution's prose is not its answer).
        reading = read_answer(solution, "boxed")
        answer = reading.answer if reading else None
    if m.format == "gsm8k" and answer is not None:
        answer = answer.strip()
    level = parse_level(raw.get(m.level), m.level) if m.level else None
    subject = _text(raw.get(m.subject), m.subject) if m.subject else None
    row_id = _text(raw.get(m.id), m.id) if m.id else None
    return {
        "question": question,
        "answer": answer.strip() if isinstance(answer, str) else answer,
        "expert_solution": expert,
        "level": level,
        "subject": subject,
        "given_id": row_id,
    }


def problem_id(fmt: str, question: str, given: str | None) -> str:
    if given is not None and given.strip():
        return given.strip()
    return f"{fmt}-{hashlib.sha256(question.encode()).hexdigest()[:16]}"
