"""Problem sources: MATH-style, GSM8K-style and generic rows, from files, folders or the Hub.

Every row read ends up in exactly one place: the ``problems`` table, the ``problems_rejected`` table
(with a reason code and a human detail), or the filtered-out count (levels/subjects/limit). Nothing is
dropped silently. A source whose columns don't fit its adapter fails up front with a message that
names the columns it has, rather than quarantining every row.

Reading is :mod:`.readers`, mapping a row to problem fields is :mod:`.adapters`; validation is here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ProblemsConfig
from pipeline.contamination import OverlapIndex
from pipeline.errors import ProblemsError
from pipeline.problems.adapters import (
    Mapping,
    detect_format,
    map_row,
    problem_id,
    raw_json,
    resolve_mapping,
    subject_key,
)
from pipeline.problems.readers import HUB_DATASETS, RawRow, iter_source
from pipeline.text import storable

__all__ = ["HUB_DATASETS", "REASONS", "ProblemSet", "ProblemsError", "load_problems"]

REASONS = {
    "malformed_row": "the row could not be read (not a JSON object, bad encoding)",
    "bad_type": "a field has a type that cannot be a question or an answer",
    "bad_text": "a field holds characters that cannot be stored (a lone surrogate, NUL)",
    "empty_question": "the question is empty",
    "missing_gold": "no gold answer (no \\boxed{} in the solution, no '####', or an empty answer field)",
    "unparseable_gold": "Math-Verify cannot parse the gold answer",
    "gold_timeout": "parsing the gold answer exceeded the verifier deadline",
    "gold_error": "parsing the gold answer failed",
    "duplicate_id": "another row already has this problem id",
    "too_long": "the question or the gold answer is longer than a problem can sensibly be",
    "contaminated": "the question overlaps a benchmark of problems.decontaminate (the detail names its row)",
}
MAX_QUESTION_CHARS = 20_000  # the longest MATH problem is ~4k characters
MAX_GOLD_CHARS = 1_000  # a final answer, not a derivation; longer ones are never parsed
GOLD_BATCH = 256  # candidates gold-checked per verifier call


@dataclass
class ProblemSet:
    problems: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rows_read: int = 0
    filtered: int = 0
    beyond_limit: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "valid": len(self.problems),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(Counter(r["reason"] for r in self.rejected)),
            "filtered_out": self.filtered,
            "beyond_limit": self.beyond_limit,
        }


class _Validator:
    """One pass over a source's rows: map, filter, check, and gold-check candidates in batches."""

    def __init__(
        self,
        cfg: ProblemsConfig,
        fmt: str | None,
        check_golds: Callable[[list[str]], list[Any]],
        overlap: OverlapIndex | None = None,
    ):
        self.cfg, self.fmt, self.check_golds, self.overlap = cfg, fmt, check_golds, overlap
        self.out = ProblemSet()
        self.mapping: Mapping | None = None
        self.seen: set[str] = set()
        self.levels = set(cfg.levels) if cfg.levels else None
        self.subjects = {subject_key(s) for s in cfg.subjects} if cfg.subjects else None
        self.candidates: list[dict[str, Any]] = []

    def reject(self, raw: RawRow, reason: str, detail: str, pid: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")  # keeps REASONS the one list
        self.out.rejected.append(
            {
                "source": raw.source,
                "source_row": raw.row,
                "problem_id": pid,
                "reason": reason,
                "detail": detail,
                "raw": raw_json(raw.data if raw.data is not None else raw.error),
            }
        )

    def take(self, raw: RawRow) -> None:
        """One row: rejected with a reason, filtered out, or queued for the gold check."""
        self.out.rows_read += 1
        if raw.data is None:
            self.reject(raw, "malformed_row", raw.error or "unreadable row")
            return
        if self.mapping is None:
            columns = set(raw.data)
            self.mapping = resolve_mapping(self.fmt or detect_format(columns), columns, self.cfg.columns, raw.source)
        m = self.mapping
        try:
            fields = map_row(raw.data, m)
        except TypeError as e:
            self.reject(raw, "bad_type", str(e))
            return
        if (self.levels is not None and fields["level"] not in self.levels) or (
            self.subjects is not None and subject_key(fields["subject"]) not in self.subjects
        ):
            self.out.filtered += 1
            return
        for name in ("question", "answer", "expert_solution", "subject", "given_id"):
            value = fields[name]
            problem = storable(value)[1] if isinstance(value, str) else None
            if problem is not None:
                self.reject(raw, "bad_text", f"{name}: {problem}")
                return
        question = fields["question"]
        if question is None or not question.strip():
            self.reject(raw, "empty_question", f"{m.question!r} is empty")
            return
        pid = problem_id(m.format, question, fields.pop("given_id"))
        if fields["answer"] is None or not fields["answer"]:
            self.reject(raw, "missing_gold", f"no gold answer in {m.answer or m.solution!r}", pid)
            return
        if len(question) > MAX_QUESTION_CHARS or len(fields["answer"]) > MAX_GOLD_CHARS:
            which = "question" if len(question) > MAX_QUESTION_CHARS else "gold answer"
            size = len(question) if which == "question" else len(fields["answer"])
            limit = MAX_QUESTION_CHARS if which == "question" else MAX_GOLD_CHARS
            self.reject(raw, "too_long", f"{which} has {size} characters (limit {limit})", pid)
            return
        if self.overlap is not None and (match := self.overlap.match(question)) is not None:
            self.reject(raw, "contaminated", match.detail(), pid)
            return
        if pid in self.seen:  # an earlier valid row has this id already: no gold check needed
            self.reject(raw, "duplicate_id", f"problem id {pid!r} already used by an earlier valid row", pid)
            return
        self.candidates.append({"problem_id": pid, **fields, "source": raw.source, "source_row": raw.row, "_raw": raw})

    def flush(self, final: bool, progress: Callable[[int, int], None] | None) -> None:
        """Gold-check candidates in batches, stopping once the limit of valid problems is met."""
        out, limit = self.out, self.cfg.limit
        while self.candidates and (final or len(self.candidates) >= GOLD_BATCH):
            room = (limit - len(out.problems)) if limit else len(self.candidates)
            if room <= 0:
                out.beyond_limit += len(self.candidates)
                self.candidates.clear()
                return
            batch = self.candidates[: max(room, 1)]
            del self.candidates[: len(batch)]
            checks = self.check_golds([c["answer"] for c in batch])
            for c, check in zip(batch, checks, strict=True):
                raw, pid = c.pop("_raw"), c["problem_id"]
                if not check.ok:  # a row rejected for its gold does not claim its id
                    self.reject(raw, check.reason, f"gold {c['answer']!r}: {check.detail}", pid)
                elif pid in self.seen:  # duplicates are decided among valid rows: the first one stays
                    self.reject(raw, "duplicate_id", f"problem id {pid!r} already used by an earlier valid row", pid)
                else:
                    self.seen.add(pid)
                    out.problems.append(c)
            if progress:
                progress(len(out.problems), out.rows_read)


def load_problems(
    cfg: ProblemsConfig,
    check_golds: Callable[[list[str]], list[Any]],
    progress: Callable[[int, int], None] | None = None,
    overlap: OverlapIndex | None = None,
) -> ProblemSet:
    """Read, map, filter and validate; ``check_golds`` is :meth:`VerifierPool.check_golds`. A row
    whose question overlaps ``overlap`` (the benchmarks of ``problems.decontaminate``) is
    quarantined as ``contaminated`` before it counts toward the limit."""
    rows, spec = iter_source(cfg)
    fmt = cfg.format if cfg.format != "auto" else (spec.format if spec else None)
    v = _Validator(cfg, fmt, check_golds, overlap)
    for raw in rows:
        v.take(raw)
        v.flush(final=False, progress=progress)
    v.flush(final=True, progress=progress)
    out = v.out
    if v.mapping is None and out.rows_read == 0:
        raise ProblemsError(f"problem source {cfg.source!r} has no rows")
    if not out.problems:
        s = out.summary()
        raise ProblemsError(
            f"no valid problems in {cfg.source!r}: {s['rows_read']} rows read, {s['rejected']} rejected "
            f"{s['rejected_by_reason'] or ''}, {s['filtered_out']} filtered out by levels/subjects"
        )
    return out
