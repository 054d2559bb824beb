"""Problem sources: MATH-style, GSM8K-style and generic rows, from files, folders or the Hub.

Every row read ends up in exactly one place: the ``problems`` table, the ``problems_rejected`` table
(with a reason code and a human detail), or the filtered-out count (levels/subjects/limit). Nothing is
dropped silently. A source whose columns don't fit its adapter fails up front with a message that
names the columns it has, rather than quarantining every row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.answers import gsm8k_final, last_boxed, strip_gsm8k_calculator
from pipeline.config import ColumnMap, ProblemsConfig, looks_like_hub_id

REASONS = {
    "malformed_row": "the row could not be read (not a JSON object, bad encoding)",
    "bad_type": "a field has a type that cannot be a question or an answer",
    "empty_question": "the question is empty",
    "missing_gold": "no gold answer (no \\boxed{} in the solution, no '####', or an empty answer field)",
    "unparseable_gold": "Math-Verify cannot parse the gold answer",
    "gold_timeout": "parsing the gold answer exceeded the verifier deadline",
    "gold_error": "parsing the gold answer failed",
    "duplicate_id": "another row already has this problem id",
    "too_long": "the question or the gold answer is longer than a problem can sensibly be",
}
MAX_QUESTION_CHARS = 20_000  # the longest MATH problem is ~4k characters
MAX_GOLD_CHARS = 1_000  # a final answer, not a derivation; longer ones are never parsed
MAX_RAW_CHARS = 2000

MATH_SUBJECTS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]


@dataclass(frozen=True)
class HubSpec:
    format: str
    subsets: list[str] | None  # configs loaded (and concatenated) when the user names none
    split: str


# The Hub datasets users name first. Anything else: `format` and `columns` in the config.
HUB_DATASETS: dict[str, HubSpec] = {
    "EleutherAI/hendrycks_math": HubSpec("math", MATH_SUBJECTS, "train"),
    "HuggingFaceH4/MATH-500": HubSpec("math", None, "test"),
    "DigitalLearningGmbH/MATH-lighteval": HubSpec("math", None, "train"),
    "openai/gsm8k": HubSpec("gsm8k", ["main"], "train"),
}


class ProblemsError(ValueError):
    """The source as a whole cannot be used (missing file, missing column, nothing valid)."""


@dataclass
class RawRow:
    source: str
    row: int
    data: dict[str, Any] | None
    error: str | None = None


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


# ----------------------------------------------------------------------------------------------
# Reading rows


def _read_jsonl(path: Path, label: str) -> Iterator[RawRow]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh):
            if not raw.strip():
                continue
            try:
                # utf-8-sig on the first line: files saved by Windows tools start with a BOM.
                data = json.loads(raw.decode("utf-8-sig" if n == 0 else "utf-8"))
            except UnicodeDecodeError as e:
                yield RawRow(label, n, None, f"line {n + 1}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                yield RawRow(label, n, None, f"line {n + 1}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(data, dict):
                yield RawRow(label, n, None, f"line {n + 1}: expected a JSON object, got {type(data).__name__}")
                continue
            yield RawRow(label, n, data)


def _read_parquet(path: Path, label: str) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ProblemsError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for data in batch.to_pylist():
            yield RawRow(label, n, data)
            n += 1


def _read_file(path: Path, label: str) -> Iterator[RawRow]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, label)
    if suffix == ".parquet":
        return _read_parquet(path, label)
    raise ProblemsError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet, or a Hub dataset id")


def _read_datasets(source: str, subsets: list[str] | None, split: str, revision: str | None) -> Iterator[RawRow]:
    """A Hub dataset, or a local folder laid out like one (README with `configs:`), via `datasets`."""
    import datasets

    for subset in subsets or [None]:
        label = f"{source}:{subset}/{split}" if subset else f"{source}/{split}"
        try:
            ds = datasets.load_dataset(source, name=subset, split=split, revision=revision)
        except Exception as e:
            raise ProblemsError(f"cannot load dataset {label}: {type(e).__name__}: {e}") from None
        for n, data in enumerate(ds):
            yield RawRow(_label_name(label), n, dict(data))


def _label_name(label: str) -> str:
    """Local paths are reduced to their last parts: tables get published, home folders must not."""
    if label.startswith("/"):
        p = Path(label.split(":")[0])
        rest = label[len(str(p)) :]
        return f"{p.parent.name}/{p.name}{rest}" if p.parent.name else f"{p.name}{rest}"
    return label


def iter_source(cfg: ProblemsConfig) -> tuple[Iterator[RawRow], HubSpec | None]:
    source = cfg.source
    path = Path(source)
    if path.is_file():
        return _read_file(path, _label_name(str(path.resolve()))), None
    if path.is_dir():
        if (path / "README.md").exists() or cfg.subsets:
            spec = HUB_DATASETS.get(path.name)
            split = cfg.split or (spec.split if spec else "train")
            return _read_datasets(str(path), cfg.subsets, split, cfg.revision), spec
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jsonl", ".json", ".parquet"))
        if not files:
            raise ProblemsError(f"{path}: folder has no .jsonl or .parquet files")

        def chain() -> Iterator[RawRow]:
            for f in files:
                yield from _read_file(f, _label_name(str(f.resolve())))

        return chain(), None
    if looks_like_hub_id(source):
        spec = HUB_DATASETS.get(source)
        subsets = cfg.subsets or (spec.subsets if spec else None)
        split = cfg.split or (spec.split if spec else "train")
        return _read_datasets(source, subsets, split, cfg.revision), spec
    raise ProblemsError(f"problem source not found: {source!r} (not a file, a folder, or a Hub id 'owner/name')")


# ----------------------------------------------------------------------------------------------
# Adapters: raw row -> problem fields


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


def parse_level(value: Any) -> int | None:
    if _is_missing(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 1 <= value <= 5 else None
    m = re.fullmatch(r"\s*(?:level\s*)?([1-5])\s*", str(value), flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def subject_key(subject: str | None) -> str | None:
    """'Counting & Probability' and 'counting_and_probability' are the same subject."""
    if subject is None:
        return None
    s = subject.strip().lower().replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


def _raw_json(data: Any) -> str:
    try:
        text = json.dumps(data, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(data)
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
        answer = last_boxed(solution)
    if m.format == "gsm8k" and answer is not None:
        answer = answer.strip()
    level = parse_level(raw.get(m.level)) if m.level else None
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


# ----------------------------------------------------------------------------------------------


def load_problems(
    cfg: ProblemsConfig,
    check_golds: Callable[[list[str]], list[Any]],
    progress: Callable[[int, int], None] | None = None,
) -> ProblemSet:
    """Read, map, filter and validate; ``check_golds`` is :meth:`VerifierPool.check_golds`."""
    rows, spec = iter_source(cfg)
    fmt = cfg.format if cfg.format != "auto" else (spec.format if spec else None)
    out = ProblemSet()
    mapping: Mapping | None = None
    seen: set[str] = set()
    levels = set(cfg.levels) if cfg.levels else None
    subjects = {subject_key(s) for s in cfg.subjects} if cfg.subjects else None
    candidates: list[dict[str, Any]] = []

    def reject(raw: RawRow, reason: str, detail: str, pid: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")  # keeps REASONS the one list
        out.rejected.append(
            {
                "source": raw.source,
                "source_row": raw.row,
                "problem_id": pid,
                "reason": reason,
                "detail": detail,
                "raw": _raw_json(raw.data if raw.data is not None else raw.error),
            }
        )

    def flush(final: bool) -> None:
        """Gold-check candidates in batches, stopping once the limit of valid problems is met."""
        while candidates and (final or len(candidates) >= 256):
            room = (cfg.limit - len(out.problems)) if cfg.limit else len(candidates)
            if room <= 0:
                out.beyond_limit += len(candidates)
                candidates.clear()
                return
            batch = candidates[: max(room, 1)]
            del candidates[: len(batch)]
            checks = check_golds([c["answer"] for c in batch])
            for c, check in zip(batch, checks, strict=True):
                raw = c.pop("_raw")
                if check.ok:
                    out.problems.append(c)
                else:
                    reject(raw, check.reason, f"gold {c['answer']!r}: {check.detail}", c["problem_id"])
            if progress:
                progress(len(out.problems), out.rows_read)

    for raw in rows:
        out.rows_read += 1
        if raw.data is None:
            reject(raw, "malformed_row", raw.error or "unreadable row")
            continue
        if mapping is None:
            columns = set(raw.data)
            mapping = resolve_mapping(fmt or detect_format(columns), columns, cfg.columns, raw.source)
        try:
            fields = map_row(raw.data, mapping)
        except TypeError as e:
            reject(raw, "bad_type", str(e))
            continue
        if levels is not None and fields["level"] not in levels:
            out.filtered += 1
            continue
        if subjects is not None and subject_key(fields["subject"]) not in subjects:
            out.filtered += 1
            continue
        question = fields["question"]
        if question is None or not question.strip():
            reject(raw, "empty_question", f"{mapping.question!r} is empty")
            continue
        pid = problem_id(mapping.format, question, fields.pop("given_id"))
        if fields["answer"] is None or not fields["answer"]:
            where = mapping.answer or mapping.solution
            reject(raw, "missing_gold", f"no gold answer in {where!r}", pid)
            continue
        if len(question) > MAX_QUESTION_CHARS or len(fields["answer"]) > MAX_GOLD_CHARS:
            which = "question" if len(question) > MAX_QUESTION_CHARS else "gold answer"
            size = len(question) if which == "question" else len(fields["answer"])
            limit = MAX_QUESTION_CHARS if which == "question" else MAX_GOLD_CHARS
            reject(raw, "too_long", f"{which} has {size} characters (limit {limit})", pid)
            continue
        if pid in seen:
            reject(raw, "duplicate_id", f"problem id {pid!r} already used by an earlier row", pid)
            continue
        seen.add(pid)
        candidates.append({"problem_id": pid, **fields, "source": raw.source, "source_row": raw.row, "_raw": raw})
        flush(final=False)
    flush(final=True)
    if mapping is None and out.rows_read == 0:
        raise ProblemsError(f"problem source {cfg.source!r} has no rows")
    if not out.problems:
        s = out.summary()
        raise ProblemsError(
            f"no valid problems in {cfg.source!r}: {s['rows_read']} rows read, {s['rejected']} rejected "
            f"{s['rejected_by_reason'] or ''}, {s['filtered_out']} filtered out by levels/subjects"
        )
    return out
