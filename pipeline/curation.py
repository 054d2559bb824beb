"""Curation: which problems and texts become training rows, and the funnel that counts every one
a rule removed.

The rules (``build`` in the run config), in the order the funnel applies them:

- ``pass_rate``: dpo/dpo_expert/dpo_self/sft rows only from problems whose CoT pass rate lies in
  ``[min_pass_rate, max_pass_rate]`` (ExPO is for problems the model cannot yet solve);
- ``truncated``: a text cut at ``max_tokens`` is never a positive (``not_chosen``), or neither a
  positive nor a rejected side (``drop``);
- ``max_tokens``: texts longer than this are neither;
- ``dedup``: a problem's texts with the same normalised text (case and whitespace) are one
  candidate, the first in sample order; never applied to grpo groups (that would change G and the
  advantages);
- ``length_ratio``: a pair whose longer side has more than ``max_length_ratio`` times the tokens of
  its shorter side is dropped (DPO learns length when pairs differ systematically in it);
- ``equal_rewards``: grpo/grpo_questa groups whose rewards are all equal (no advantage signal) are
  dropped (``grpo_equal_rewards: drop``).

Every rule is off by default, and what an off rule would remove is counted all the same (a
threshold rule without a threshold has nothing to count). The funnel is measured, not estimated:
the tables are built with no rule, then with each rule added in turn; a rule's count is the rows
its addition removed, per table and level. Rows written = rows with no rule minus what the applied
rules removed, for every table, and a test holds the builders to it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

import polars as pl

from pipeline.config import BuildConfig
from schemas.run_doc import BuildStats, FunnelStep, ProblemsSummary, RunDoc

UNITS = {  # what each rule looks at
    "pass_rate": "problems",
    "truncated": "texts",
    "max_tokens": "texts",
    "dedup": "texts",
    "length_ratio": "pairs",
    "equal_rewards": "groups",
}


@dataclass(frozen=True)
class Rules:
    """The rules one build applies; the default applies none."""

    pass_rate: tuple[float, float] | None = None
    truncated: str = "keep"  # keep | not_chosen | drop
    max_tokens: int | None = None
    dedup: bool = False
    max_length_ratio: float | None = None
    drop_equal_rewards: bool = False


NO_RULES = Rules()


@dataclass(frozen=True)
class Step:
    """One rule of the chain: the rules with it added, whether the build applies it (or only counts
    what it would remove), and how it reads in the funnel."""

    rule: str
    rules: Rules
    applied: bool
    setting: str


def chain(cfg: BuildConfig) -> list[Step]:
    """The funnel's steps for this config, in order; each step's ``rules`` hold every applied rule
    before it plus its own."""
    steps: list[Step] = []
    current = Rules()

    def add(rule: str, trial: Rules, applied: bool, setting: str) -> None:
        nonlocal current
        steps.append(Step(rule, trial, applied, setting))
        if applied:
            current = trial

    window = (cfg.min_pass_rate, cfg.max_pass_rate)
    if window != (0.0, 1.0):
        add("pass_rate", replace(current, pass_rate=window), True, f"{window[0]:g} <= CoT pass rate <= {window[1]:g}")
    mode = cfg.truncated
    add(
        "truncated",
        replace(current, truncated="not_chosen" if mode == "keep" else mode),
        mode != "keep",
        "never a positive" if mode != "drop" else "neither a positive nor rejected",
    )
    if cfg.max_tokens is not None:
        add("max_tokens", replace(current, max_tokens=cfg.max_tokens), True, f"<= {cfg.max_tokens} tokens")
    add("dedup", replace(current, dedup=True), cfg.dedup, "one candidate per normalised text")
    if cfg.max_length_ratio is not None:
        ratio = cfg.max_length_ratio
        add("length_ratio", replace(current, max_length_ratio=ratio), True, f"longer/shorter side <= {ratio:g}")
    add(
        "equal_rewards",
        replace(current, drop_equal_rewards=True),
        cfg.grpo_equal_rewards == "drop",
        "drop grpo groups with all rewards equal",
    )
    return steps


AFFECTS = {"equal_rewards": ("grpo", "grpo_questa")}
"""The tables a rule can change, where that is fewer than all: the funnel rebuilds only those."""


def can_change(step: Step, samples: pl.LazyFrame) -> bool:
    """Whether a step's rule can remove anything from this shard's tables; when it cannot, the
    funnel reuses the tables it has instead of building them again (the counts are the same)."""
    r = step.rules
    if step.rule == "truncated":
        hit = pl.col("finish_reason") == "length"
    elif step.rule == "max_tokens" and r.max_tokens is not None:
        hit = pl.col("completion_tokens") > r.max_tokens
    elif step.rule == "dedup":
        hit = normalised_text("completion").is_duplicated().over(["problem_id", "kind"])
    else:
        return True
    return samples.select(hit.fill_null(False).any()).collect().item()


def normalised_text(col: str) -> pl.Expr:
    """What ``dedup`` compares: the text with case and runs of whitespace ignored."""
    return pl.col(col).str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def in_validation(problem_id: str, fraction: float) -> bool:
    """Whether a problem's rows go to the validation split: a hash of its id, so the split is the
    same on every rebuild and machine, and a problem is never on both sides."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def validation_ids(problem_ids: Iterable[str], fraction: float) -> list[str]:
    return [pid for pid in problem_ids if in_validation(pid, fraction)]


Counts = dict[str, Counter[str]]  # table -> level -> rows


class Funnel:
    """Accumulates, over a build's shards, the rows each table had with no rule and what each rule
    removed from it, by level."""

    def __init__(self, cfg: BuildConfig, tables: Iterable[str]):
        self.tables = list(tables)
        self.steps = chain(cfg)
        self.candidates: Counts = {t: Counter() for t in self.tables}
        self.removed: list[Counts] = [{t: Counter() for t in self.tables} for _ in self.steps]

    def add(self, base: Counts, after: list[Counts]) -> None:
        """One shard: the counts with no rule, and the counts after each step."""
        for t in self.tables:
            self.candidates[t].update(base.get(t, {}))
        before = base
        for k, (step, counts) in enumerate(zip(self.steps, after, strict=True)):
            for t in self.tables:
                levels = set(before.get(t, {})) | set(counts.get(t, {}))
                for level in levels:
                    gone = before.get(t, {}).get(level, 0) - counts.get(t, {}).get(level, 0)
                    if gone:
                        self.removed[k][t][level] += gone
            if step.applied:
                before = counts

    def doc_steps(self) -> list[FunnelStep]:
        return [
            FunnelStep(
                rule=step.rule,
                unit=UNITS[step.rule],
                applied=step.applied,
                setting=step.setting,
                removed={t: sum(c.values()) for t, c in removed.items()},
                removed_by_level={t: dict(sorted(c.items())) for t, c in removed.items() if c},
            )
            for step, removed in zip(self.steps, self.removed, strict=True)
        ]


def level_counts(frame: pl.DataFrame) -> Counter[str]:
    """Rows per level of a built table (levels as strings, as run.json keys them)."""
    if frame.height == 0:
        return Counter()
    grouped = frame.group_by("level").len()
    return Counter({str(level): n for level, n in grouped.iter_rows()})


def problem_lines(problems: ProblemsSummary | None) -> list[str]:
    """The funnel's first stage: problems read, quarantined (by reason, contaminated included) and
    kept."""
    if problems is None:
        return []
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(problems.rejected_by_reason.items())) or "none"
    lines = [
        f"Problems: {problems.rows_read} rows read, {problems.filtered_out} outside levels/subjects, "
        f"{problems.beyond_limit} beyond the limit, {problems.rejected} quarantined ({reasons}), "
        f"{problems.valid} kept."
    ]
    c = problems.contamination
    if c is not None and c.benchmarks:
        against = ", ".join(f"{b.source} ({b.questions} questions)" for b in c.benchmarks)
        gram = f"{c.ngram}-gram" if c.ngram else "whole-question"
        lines.append(f"Decontaminated against {against}: {c.contaminated} problem(s) quarantined ({gram} overlap).")
    return lines


def funnel_lines(build: BuildStats | None) -> list[str]:
    """The funnel as a markdown table: rows per table with no rule, what each rule removed (in
    parentheses: would remove, not applied), and the rows written per split."""
    if build is None or build.funnel is None:
        return []
    f = build.funnel
    tables = [t for t, n in f.candidates.items() if n]
    if not tables:
        return []
    head = ["| step | looks at | setting | " + " | ".join(tables) + " |", "|---|---|---|" + "---|" * len(tables)]
    rows = ["| no rule | | | " + " | ".join(str(f.candidates[t]) for t in tables) + " |"]
    for s in f.steps:
        cells = [(f"-{s.removed.get(t, 0)}" if s.applied else f"({s.removed.get(t, 0)})") for t in tables]
        name = s.rule if s.applied else f"{s.rule} (off)"
        rows.append(f"| {name} | {s.unit} | {s.setting} | " + " | ".join(cells) + " |")
    rows.append("| rows (train) | | | " + " | ".join(str(build.rows.get(t, 0)) for t in tables) + " |")
    if build.validation_rows:
        cells = " | ".join(str(build.validation_rows.get(t, 0)) for t in tables)
        rows.append(f"| rows (validation, {build.validation_problems} problems) | | | {cells} |")
    return head + rows


def funnel_level_lines(build: BuildStats | None) -> list[str]:
    """Each rule's removals per table and level (only where it removed something)."""
    if build is None or build.funnel is None:
        return []
    steps = [s for s in build.funnel.steps if s.removed_by_level]
    levels = sorted({lv for s in steps for by in s.removed_by_level.values() for lv in by})
    if not steps:
        return []
    lines = [
        "| rule | table | " + " | ".join(f"level {lv}" for lv in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for s in steps:
        for table, by in s.removed_by_level.items():
            name = s.rule if s.applied else f"{s.rule} (off)"
            lines.append(f"| {name} | {table} | " + " | ".join(str(by.get(lv, 0)) for lv in levels) + " |")
    return lines


def funnel_section(doc: RunDoc | None) -> list[str]:
    """The report's and the card's curation section: problems, then rows per table and rule."""
    if doc is None or doc.build is None or doc.build.funnel is None:
        return []
    lines = ["## Curation funnel", "", *problem_lines(doc.problems)]
    table = funnel_lines(doc.build)
    if table:
        lines += [
            "",
            "Rows per training table with no curation rule, what each rule removed (in parentheses: what an "
            "off rule would remove), and the rows written.",
            "",
            *table,
        ]
    by_level = funnel_level_lines(doc.build)
    if by_level:
        lines += ["", "By level:", "", *by_level]
    return [*lines, ""]
