"""Training sets from the sample tables, written shard by shard with their curation funnel.

Polars lazy scans, one samples shard at a time (a problem's samples all live in one shard), so
memory does not grow with the run. Each table is written as a folder of parts and swapped in whole,
so a reader never sees half a rebuild; with ``build.validation_fraction`` the validation split's
parts go to the table's ``validation/`` subfolder (whole problems, chosen by a hash of the id).
What the rows are is :mod:`pipeline.builders`; which rules cut them, and the funnel, is
:mod:`pipeline.curation`.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import polars as pl

import schemas
from pipeline import builders, conditionings, curation, progress
from pipeline.config import BuildConfig
from pipeline.problem_table import ProblemIndex
from pipeline.store import VALIDATION, RunDir, parquet_files, rows_by_level, scan_table, write_parquet
from schemas.run_doc import BuildCoverage, BuildStats, Funnel, HintLeaks


def questa_fractions(run: RunDir) -> dict[str, float]:
    """The partial-solution variants of the run (``conditioning`` value -> fraction), from the
    config run.json records."""
    doc = run.read_doc()
    if doc is None or doc.config is None:
        return {}
    return {v.label: v.p for v in conditionings.variants(doc.config) if v.kind == "partial_solution" and v.p}


def _collect(frames: dict[str, pl.LazyFrame]) -> dict[str, pl.DataFrame]:
    return dict(zip(frames, pl.collect_all(list(frames.values())), strict=True))


def build_datasets(run: RunDir, cfg: BuildConfig) -> BuildStats:
    """Rebuild every training set from the samples shards; returns counts for run.json and report.

    One shard at a time: its samples are scanned lazily, and only the problems it names are read,
    so peak memory follows the shard size, not the run's. Each shard is built once with no rule and
    once per funnel step (:func:`pipeline.curation.chain`); the last applied step's tables are
    written."""
    index = ProblemIndex(run.problems)
    fractions = questa_fractions(run)
    staging = {name: run.root / f".{name}.new" for name in schemas.DATASETS}
    for path in staging.values():
        shutil.rmtree(path, ignore_errors=True)
        (path / VALIDATION).mkdir(parents=True)
    counts: Counter[str] = Counter()
    validation: Counter[str] = Counter()
    validation_problems = 0
    paired: set[str] = set()
    funnel = curation.Funnel(cfg, schemas.DATASETS)
    shards = parquet_files(run.samples)
    progress.emit("build.start", shards=len(shards))
    for shard_file in shards:
        progress.emit("build.shard", shard=shard_file.name)
        samples = scan_table([shard_file], "samples")
        problems = index.for_ids(samples.select("problem_id").collect()["problem_id"])
        built = _collect(builders.tables(samples, problems, cfg, curation.NO_RULES, fractions))
        base = built_counts = {name: curation.level_counts(f) for name, f in built.items()}
        after = []
        for step in funnel.steps:
            frames, step_counts = built, built_counts
            if curation.can_change(step, samples):
                lazy = builders.tables(samples, problems, cfg, step.rules, fractions)
                changed = _collect({name: lazy[name] for name in curation.AFFECTS.get(step.rule, lazy)})
                frames = {**built, **changed}
                step_counts = {**built_counts, **{name: curation.level_counts(f) for name, f in changed.items()}}
            after.append(step_counts)
            if step.applied:
                built, built_counts = frames, step_counts
        funnel.add(base, after)
        held = curation.validation_ids(problems.select("problem_id").collect()["problem_id"], cfg.validation_fraction)
        validation_problems += len(held)
        for name, frame in built.items():
            parts = {
                "train": frame.filter(~pl.col("problem_id").is_in(held)),
                VALIDATION: frame.filter(pl.col("problem_id").is_in(held)),
            }
            for split, rows in parts.items():
                if rows.height == 0:
                    continue  # no empty parts: `datasets` refuses a folder that holds one
                folder = staging[name] if split == "train" else staging[name] / VALIDATION
                write_parquet(builders.to_arrow(rows, name), folder / shard_file.name.replace("shard-", "part-"))
                (counts if split == "train" else validation)[name] += rows.height
            if name == "dpo":
                paired.update(frame["problem_id"].to_list())
    for name, path in staging.items():
        if not any((path / VALIDATION).iterdir()):
            (path / VALIDATION).rmdir()
        progress.emit("build.swap", table=name)
        _swap_in(path, run.table(name))
    coverage, leaks = _coverage(run, cfg, index.rows, len(paired))
    return BuildStats(
        settings=cfg,
        rows={name: counts[name] for name in schemas.DATASETS},
        rows_by_level={name: rows_by_level(run.table(name)) for name in schemas.DATASETS},
        validation_rows={name: validation[name] for name in schemas.DATASETS} if cfg.validation_fraction else {},
        validation_problems=validation_problems,
        problems=coverage,
        hint_leaks=leaks,
        dpo_pairs_without_candidate={
            "dpo_expert": counts["dpo"] + validation["dpo"] - counts["dpo_expert"] - validation["dpo_expert"],
            "dpo_self": counts["dpo"] + validation["dpo"] - counts["dpo_self"] - validation["dpo_self"],
        },
        funnel=Funnel(
            candidates={t: sum(c.values()) for t, c in funnel.candidates.items()},
            candidates_by_level={t: dict(sorted(c.items())) for t, c in funnel.candidates.items()},
            steps=funnel.doc_steps(),
        ),
    )


def _swap_in(staged: Path, final: Path) -> None:
    """Replace a table folder by its rebuilt version; a crash in between leaves it to the next run."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _coverage(run: RunDir, cfg: BuildConfig, n_problems: int, paired: int) -> tuple[BuildCoverage, HintLeaks]:
    """How many problems each set could not use, and why: nothing goes missing silently."""
    samples = scan_table(parquet_files(run.samples), "samples")
    c = builders.candidates(samples, cfg)
    with_expl = c["explanations"].select("problem_id").unique().collect().height
    with_rejected = c["rejected"].select("problem_id").unique().collect().height
    leaks = (
        samples.filter(builders.positive(cfg))
        .select(
            pl.len().alias("explanations"),
            pl.col("hint_leak").fill_null(False).sum().alias("hint_leaks"),
            ((pl.col("verdict") == "correct") & pl.col("hint_leak").fill_null(False)).sum().alias("correct_leaks"),
        )
        .collect()
        .row(0, named=True)
    )
    coverage = BuildCoverage(
        total=n_problems,
        with_verified_explanation=with_expl,
        with_rejectable_cot=with_rejected,
        paired=paired,
        without_verified_explanation=n_problems - with_expl,
        without_rejectable_cot=n_problems - with_rejected,
    )
    return coverage, HintLeaks(**leaks)
