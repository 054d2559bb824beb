"""What a run produced, counted: samples, verdicts and accuracy by kind and by level.

Every figure is an aggregate query over a lazy scan of the samples shards (polars' streaming
engine), so the texts are never read and memory does not grow with the run. run.json, the CLI, the
Prefect artifact, the report and the dataset card all show these numbers.
"""

from __future__ import annotations

from typing import Any

import polars as pl

import schemas
from pipeline.config import GenerationConfig
from pipeline.store import RunDir, parquet_files, scan_table
from schemas.run_doc import ExplanationSaving, RunSummary, ShardRecord


def _acc(correct: int, total: int) -> float | None:
    return round(correct / total, 4) if total else None


def summarize(samples: pl.DataFrame | pl.LazyFrame) -> RunSummary:
    """Counts and accuracy by kind and level, from the samples' problem_id, kind, level, verdict.

    Every figure is an aggregate query, run by polars' streaming engine on a lazy scan, so the
    samples are never all in memory."""
    lf = samples.lazy()

    def q(frame: pl.LazyFrame) -> pl.DataFrame:
        return frame.collect(engine="streaming")

    by_verdict = q(lf.group_by("kind", "verdict").len())
    solved = q(
        lf.group_by("kind", "problem_id")
        .agg((pl.col("verdict") == "correct").any().alias("ok"))
        .group_by("kind")
        .agg(pl.len().alias("problems"), pl.col("ok").sum().alias("solved"))
    )
    kinds: dict[str, Any] = {}
    for kind in schemas.KINDS:
        part = by_verdict.filter(pl.col("kind") == kind)
        total = int(part["len"].sum()) if part.height else 0
        if total == 0:
            continue
        got = dict(zip(part["verdict"].to_list(), part["len"].to_list(), strict=True))
        counts = {v: int(got.get(v, 0)) for v in schemas.VERDICTS}
        row = solved.filter(pl.col("kind") == kind).row(0, named=True)
        kinds[kind] = {
            "samples": total,
            "verdicts": counts,
            "accuracy": _acc(counts["correct"], total),
            "problems": int(row["problems"]),
            "problems_with_a_correct_sample": int(row["solved"]),
        }
    levels: dict[str, Any] = {}
    grouped = q(
        lf.with_columns(pl.col("level").cast(pl.String).fill_null("none").alias("lvl"))
        .group_by(["lvl", "kind"])
        .agg((pl.col("verdict") == "correct").sum().alias("c"), pl.len().alias("t"))
        .sort(["lvl", "kind"])
    )
    for row in grouped.iter_rows(named=True):
        levels.setdefault(row["lvl"], {})[row["kind"]] = {
            "correct": int(row["c"]),
            "samples": int(row["t"]),
            "accuracy": _acc(int(row["c"]), int(row["t"])),
        }
    total = int(by_verdict["len"].sum()) if by_verdict.height else 0
    return RunSummary.model_validate({"samples": total, "by_kind": kinds, "by_level": levels})


def scan_samples(run: RunDir, columns: list[str]) -> pl.LazyFrame:
    """A lazy scan of the named columns of every samples shard (never the texts unless asked),
    each shard schema-checked first."""
    return scan_table(parquet_files(run.samples), "samples").select(columns)


def summarize_run(run: RunDir) -> RunSummary:
    return summarize(scan_samples(run, ["problem_id", "kind", "level", "verdict"]))


def summary_table_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """Accuracy by level and kind as flat rows (for a Prefect table artifact, the terminal, the
    report and the dataset card)."""
    out = []
    for level, cells in summary.by_level.items():
        row: dict[str, Any] = {"level": level}
        for kind in schemas.KINDS:
            cell = cells.get(kind)
            row[f"{kind}_accuracy"] = cell.accuracy if cell else None
            row[f"{kind}_samples"] = cell.samples if cell else 0
        out.append(row)
    total: dict[str, Any] = {"level": "all"}
    for kind in schemas.KINDS:
        k = summary.by_kind.get(kind)
        total[f"{kind}_accuracy"] = k.accuracy if k else None
        total[f"{kind}_samples"] = k.samples if k else 0
    out.append(total)
    return out


def explanation_saving(gen: GenerationConfig, run: RunDir, shards: dict[str, ShardRecord]) -> ExplanationSaving | None:
    """What ``generation.explanations_for`` saved over the run (None where every conditioning is
    asked for on every problem): problems and texts not requested, and the tokens that is,
    estimated from the explanation-like texts made."""
    if not gen.verifies_cots_first:
        return None
    setting = gen.explanations_for
    if isinstance(setting, dict):
        setting = ", ".join(f"{k}: {v}" for k, v in setting.items())
    made = (
        scan_samples(run, ["kind", "completion_tokens"])
        .filter(pl.col("kind") == "explanation")
        .select(pl.len().alias("n"), pl.col("completion_tokens").mean().alias("mean"))
        .collect()
        .row(0, named=True)
    )
    records = list(shards.values())
    skipped = sum(r.explanations_skipped_texts or 0 for r in records)
    by_entry: dict[str, int] = {}
    for r in records:
        for entry, n in (r.explanations_skipped_by_entry or {}).items():
            by_entry[entry] = by_entry.get(entry, 0) + n
    mean = made["mean"]
    return ExplanationSaving(
        setting=str(setting),
        problems=sum(r.problems for r in records),
        problems_skipped=sum(r.explanations_skipped_problems or 0 for r in records),
        texts_skipped=skipped,
        texts_skipped_by_entry=by_entry,
        hint_requests_skipped=sum(r.hint_requests_skipped or 0 for r in records),
        texts_generated=made["n"],
        mean_text_tokens=round(mean, 1) if mean is not None else None,
        est_tokens_saved=round(skipped * mean) if mean is not None else None,
    )
