"""Benchmark overlap: the one index that decides whether a training problem is a test problem.

Competition problems travel between datasets, so a training set cut from a large mix can hold a
benchmark's problems verbatim or lightly reworded. The check is open-r1's: a training question that
shares a word n-gram (n = 8 by default) with any benchmark question overlaps it. Words are
open-r1's (lowercased, split on whitespace) with math delimiters and the punctuation around a word
dropped, so "$23+45$?" and "23+45" are the same word. A question shorter than n words has no
n-gram; it is compared whole instead, so "What is $23+45$?" is not waved through.

The index is a dict from n-gram to the first benchmark row that holds it: building it is linear in
the benchmark's words and a lookup is linear in the question's, never a pairwise scan.

It serves three callers: ``problems.decontaminate`` quarantines overlapping training problems with
reason ``contaminated`` (the detail names the benchmark and its row), ``expo-data decontaminate``
runs the check alone, and the online loop and the experiment refuse held-out problems that the
training problems hold (:func:`check_held_out`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError, ProblemsError

DEFAULT_N = 8
_DELIMITERS = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]")
_EDGE_PUNCT = ".,;:!?\"'()"


def words(text: str) -> list[str]:
    """The normalised words of a question (see the module docstring)."""
    out = []
    for w in _DELIMITERS.sub(" ", text.lower()).split():
        w = w.strip(_EDGE_PUNCT)
        if w:
            out.append(w)
    return out


@dataclass(frozen=True)
class Entry:
    """One indexed question: where it comes from (a source label such as
    ``HuggingFaceH4/MATH-500/test``), its row there, and its problem id when it has one."""

    benchmark: str
    row: int
    problem_id: str | None = None

    def describe(self) -> str:
        ident = f" ({self.problem_id})" if self.problem_id else ""
        return f"{self.benchmark} row {self.row}{ident}"


@dataclass(frozen=True)
class Match:
    entry: Entry
    shared: str  # the shared n-gram, or the whole normalised question

    def detail(self) -> str:
        return f"overlaps {self.entry.describe()}: {self.shared!r}"


class OverlapIndex:
    """Word n-grams of a set of questions, and the whole normalised text of those shorter than n.
    ``n=None`` compares whole questions only: the check for problem sets drawn from templates, where
    every question shares phrases with every other ("what is the last digit of ...")."""

    def __init__(self, n: int | None = DEFAULT_N):
        if n is not None and n < 1:
            raise ValueError("the n-gram size must be at least 1")
        self.n = n if n is not None else float("inf")
        self.entries: list[Entry] = []
        self.sources: dict[str, int] = {}  # questions indexed per benchmark source
        self._grams: dict[str, int] = {}
        self._whole: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, question: str, entry: Entry) -> None:
        w = words(question)
        if not w:
            return
        idx = len(self.entries)
        self.entries.append(entry)
        self.sources[entry.benchmark] = self.sources.get(entry.benchmark, 0) + 1
        if len(w) < self.n:
            self._whole.setdefault(" ".join(w), idx)
            return
        for i in range(len(w) - int(self.n) + 1):
            self._grams.setdefault(" ".join(w[i : i + int(self.n)]), idx)

    def match(self, question: str) -> Match | None:
        """The first benchmark row this question overlaps, in the question's word order."""
        w = words(question)
        if len(w) < self.n:
            key = " ".join(w)
            idx = self._whole.get(key) if key else None
            return Match(self.entries[idx], key) if idx is not None else None
        for i in range(len(w) - int(self.n) + 1):
            gram = " ".join(w[i : i + int(self.n)])
            idx = self._grams.get(gram)
            if idx is not None:
                return Match(self.entries[idx], gram)
        return None


def benchmark_questions(cfg: Any) -> Iterator[tuple[str, Entry]]:
    """Every question of a source (a ``ProblemsConfig``), whatever its level or gold: a benchmark
    row is indexed even where it would not pass as a training problem."""
    from pipeline.problems.adapters import detect_format, map_row, problem_id, resolve_mapping
    from pipeline.problems.readers import iter_source

    rows, spec = iter_source(cfg)
    fmt = cfg.format if cfg.format != "auto" else (spec.format if spec else None)
    mapping = None
    for raw in rows:
        if raw.data is None:
            continue
        if mapping is None:
            columns = set(raw.data)
            mapping = resolve_mapping(fmt or detect_format(columns), columns, cfg.columns, raw.source)
        try:
            fields = map_row(raw.data, mapping)
        except TypeError:
            continue
        question = fields["question"]
        if isinstance(question, str) and question.strip():
            pid = problem_id(mapping.format, question, fields.get("given_id"))
            yield question, Entry(raw.source, raw.row, pid)


def build_index(sources: Iterable[Any], n: int | None = DEFAULT_N) -> OverlapIndex:
    """One index over every benchmark source (``ProblemsConfig`` each); a source with no question
    is an error, not an empty check that passes everything."""
    index = OverlapIndex(n)
    for src in sources:
        before = len(index)
        for question, entry in benchmark_questions(src):
            index.add(question, entry)
        if len(index) == before:
            raise ProblemsError(f"benchmark source {src.source!r} has no questions to check against")
    return index


def index_problems(problems: Iterable[dict[str, Any]], label: str, n: int | None = DEFAULT_N) -> OverlapIndex:
    """An index over problem rows already loaded (``problem_id``, ``question``, optional
    ``source``/``source_row``)."""
    index = OverlapIndex(n)
    for i, p in enumerate(problems):
        index.add(p["question"], Entry(p.get("source") or label, p.get("source_row", i), p.get("problem_id")))
    return index


def overlapping(index: OverlapIndex, problems: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], Match]]:
    """The problems that overlap the index, each with its first match."""
    return [(p, m) for p in problems if (m := index.match(p["question"])) is not None]


def check_held_out(train: Any, heldout: Any, allow_key: str, n: int | None = DEFAULT_N) -> int:
    """Refuse held-out problems (a ``ProblemsConfig``) that overlap the training problems;
    ``allow_key`` names the setting that lets a user accept the overlap. Returns the held-out count."""
    from pipeline.problems import load_problems
    from pipeline.verify import VerifierPool

    with VerifierPool(workers=1) as pool:
        train_rows = load_problems(train, pool.check_golds).problems
        heldout_rows = load_problems(heldout, pool.check_golds).problems
    found = overlapping(index_problems(train_rows, str(train.source), n), heldout_rows)
    if found:
        shown = "; ".join(f"{p['problem_id']} {m.detail()}" for p, m in found[:3])
        raise ConfigError(
            f"{len(found)} held-out problem(s) from {heldout.source} overlap the training problems "
            f"({train.source}), e.g. {shown}; use a disjoint split, or set {allow_key}: true"
        )
    return len(heldout_rows)


def parse_source(spec: str) -> Any:
    """``SOURCE[:SUBSET,...][@SPLIT]`` (``openai/gsm8k:main@test``) as a source config; a local
    path is taken whole when it exists."""
    from pathlib import Path

    from pipeline.config import BenchmarkSource
    from pipeline.sources import resolve_path

    if Path(spec).expanduser().exists():
        return BenchmarkSource(source=str(Path(spec).expanduser().resolve()))
    rest, _, split = spec.partition("@")
    source, _, subsets = rest.partition(":")
    if not source:
        raise ConfigError(f"{spec!r}: expected SOURCE[:SUBSET,...][@SPLIT]")
    return BenchmarkSource(
        source=resolve_path(source, Path.cwd()),
        subsets=[s for s in subsets.split(",") if s] or None,
        split=split or None,
    )


@dataclass
class Finding:
    """A checked row that overlaps a benchmark."""

    row: Entry
    question: str
    match: Match

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.row.benchmark,
            "row": self.row.row,
            "problem_id": self.row.problem_id,
            "question": self.question,
            "benchmark": self.match.entry.benchmark,
            "benchmark_row": self.match.entry.row,
            "benchmark_problem_id": self.match.entry.problem_id,
            "shared": self.match.shared,
        }


@dataclass
class Check:
    """``expo-data decontaminate``: every row of a source checked against the benchmarks."""

    checked: int
    findings: list[Finding]
    benchmarks: dict[str, int]
    index_s: float
    check_s: float


def check_source(source: Any, against: list[Any], n: int | None = DEFAULT_N) -> Check:
    """Index the benchmarks, then look up every question of ``source``."""
    import time

    t0 = time.monotonic()
    index = build_index(against, n)
    t1 = time.monotonic()
    checked, findings = 0, []
    for question, entry in benchmark_questions(source):
        checked += 1
        if (m := index.match(question)) is not None:
            findings.append(Finding(entry, question, m))
    return Check(checked, findings, dict(index.sources), round(t1 - t0, 3), round(time.monotonic() - t1, 3))
