"""Training sets from the sample tables, written batch by batch with their curation funnel.

Polars lazy scans, one batch of samples shards at a time (a problem's samples all live in one
shard), so memory does not grow with the run. Each table is written as a folder of parts (one per
batch) and swapped in whole, so a reader never sees half a rebuild; with ``build.validation_fraction`` the validation split's
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
from pipeline.store import VALIDATION, RunDir, parquet_files, parquet_rows, rows_by_level, scan_table, write_parquet
from schemas.run_doc import BuildCoverage, BuildStats, Funnel, HintLeaks


def questa_fractions(run: RunDir) -> dict[str, float]:
    """The partial-solution variants of the run (``conditioning`` value -> fraction), from the
    config run.json records."""
    doc = run.read_doc()
    if doc is None or doc.config is None:
        return {}
    return {v.label: v.p for v in conditionings.variants(doc.config) if v.kind == "partial_solution" and v.p}


def forget_outputs_key(run: RunDir) -> None:
    """The tables are about to change: until run.json records what they were made from again, a
    rerun must not take them as current (a build killed halfway, a rebuild with other settings)."""
    doc = run.read_doc()
    if doc is not None and doc.outputs_key is not None:
        doc.outputs_key = None
        run.write_doc(doc)


BUILD_BATCH_ROWS = 20_000  # samples rows built together: bounds memory, and parts per table


def _batches(shards: list[Path]) -> list[list[Path]]:
    """Consecutive samples shards, grouped until a group holds ``BUILD_BATCH_ROWS`` rows: one build
    pass and one part per table for each group, not for each shard (10,000 shards of a few problems
    would make 60,000 small parts and pay polars' per-query cost 10,000 times)."""
    batches: list[list[Path]] = []
    rows = 0
    for f in shards:
        n = parquet_rows(f)
        if not batches or (rows and rows + n > BUILD_BATCH_ROWS):
            batches.append([])
            rows = 0
        batches[-1].append(f)
        rows += n
    return batches


def _collect(frames: dict[str, pl.LazyFrame]) -> dict[str, pl.DataFrame]:
    return dict(zip(frames, pl.collect_all(list(frames.values())), strict=True))


def build_datasets(run: RunDir, cfg: BuildConfig) -> BuildStats:
    """Rebuild every training set from the samples shards; returns counts for run.json and report.

    One batch of shards at a time (:data:`BUILD_BATCH_ROWS` samples rows): its samples are scanned
    lazily, and only the problems it names are read, so peak memory follows the batch, not the run.
    Each batch is built once with no rule and once per funnel step (:func:`pipeline.curation.chain`);
    the last applied step's tables are written."""
    forget_outputs_key(run)
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
    found: Counter[str] = Counter()  # coverage and leak counts, summed over batches
    funnel = curation.Funnel(cfg, schemas.DATASETS)
    shards = parquet_files(run.samples)
    batches = _batches(shards)
    progress.emit("build.start", shards=len(shards), batches=len(batches))
    for batch in batches:
        shard_file = batch[0]  # a batch's parts are named after its first shard
        progress.emit("build.shard", shard=shard_file.name, shards=len(batch))
        # Read once, then every frame of every funnel step works on memory, not on the files.
        samples = scan_table(batch, "samples").collect().lazy()
        found += _coverage_counts(samples, cfg)
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
    coverage, leaks = _coverage(found, index.rows, len(paired))
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


def _coverage_counts(samples: pl.LazyFrame, cfg: BuildConfig) -> Counter[str]:
    """One batch's share of the coverage and leak counts (batches never split a problem)."""
    c = builders.candidates(samples, cfg)
    with_expl = c["explanations"].select(pl.col("problem_id").n_unique().alias("with_expl"))
    with_rejected = c["rejected"].select(pl.col("problem_id").n_unique().alias("with_rejected"))
    leak = pl.col("hint_leak").fill_null(False)
    leaks = samples.filter(builders.positive(cfg)).select(
        pl.len().alias("explanations"),
        leak.sum().alias("hint_leaks"),
        ((pl.col("verdict") == "correct") & leak).sum().alias("correct_leaks"),
    )
    frames = pl.collect_all([with_expl, with_rejected, leaks])
    return Counter({k: int(v) for f in frames for k, v in f.row(0, named=True).items()})


def _coverage(found: Counter[str], n_problems: int, paired: int) -> tuple[BuildCoverage, HintLeaks]:
    """How many problems each set could not use, and why: nothing goes missing silently."""
    with_expl, with_rejected = found["with_expl"], found["with_rejected"]
    coverage = BuildCoverage(
        total=n_problems,
        with_verified_explanation=with_expl,
        with_rejectable_cot=with_rejected,
        paired=paired,
        without_verified_explanation=n_problems - with_expl,
        without_rejectable_cot=n_problems - with_rejected,
    )
    leaks = HintLeaks(
        explanations=found["explanations"], hint_leaks=found["hint_leaks"], correct_leaks=found["correct_leaks"]
    )
    return coverage, leaks
