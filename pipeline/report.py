"""The run report: what a researcher checks before training on a run.

Everything is recomputed from the tables in the run dir (never from memory of the run), so
``expo-data report RUN_DIR`` rebuilds the same page at any time: accuracy by level for CoT vs
explanations, the two ExPO scores by kind of text, pair counts per level, hint leaks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.store import RunDir, atomic_write, parquet_files, parquet_rows, rows_by_level
from schemas.run_doc import RunSummary

PLOTS = ("accuracy_by_level.png", "nll_mean.png", "answer_logprob.png", "pairs_by_level.png", "hint_leaks.png")


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
    files = [str(p) for p in parquet_files(run.samples)]
    for f in files:
        schemas.check(pq.read_schema(f), "samples", where=f)
    if not files:
        return pl.from_arrow(schemas.empty("samples").select(columns)).lazy()
    return pl.scan_parquet(files).select(columns)


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


# ----------------------------------------------------------------------------------------------


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.1%}" if pct else f"{x:.3f}"


def _floats(values: Any) -> np.ndarray:
    """Finite float64 values of an Arrow/polars column or a sequence; nulls and NaN dropped."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values.to_numpy(zero_copy_only=False)
    else:
        arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    return arr[np.isfinite(arr)]


def _median(values: Any) -> float | None:
    vals = _floats(values)
    return float(np.median(vals)) if vals.size else None


def _score_series(samples: pl.LazyFrame) -> dict[tuple[str, str], np.ndarray]:
    """The score columns the report plots, per group of texts, as float arrays."""
    groups = {
        "explanation": pl.col("kind") == "explanation",
        "cot": pl.col("kind") == "cot",
        "incorrect cot": (pl.col("kind") == "cot") & (pl.col("verdict") != "correct"),
    }
    out: dict[tuple[str, str], np.ndarray] = {}
    for name, cond in groups.items():
        part = samples.filter(cond).select("nll_mean", "answer_logprob").collect(engine="streaming")
        for col in ("nll_mean", "answer_logprob"):
            out[name, col] = _floats(part[col].to_arrow())
    return out


def _table_rows(run: RunDir) -> dict[str, int]:
    return {name: parquet_rows(run.table(name)) if run.table(name).exists() else 0 for name in schemas.DATASETS}


PAIR_TABLES = ("dpo", "dpo_expert", "dpo_self", "sft")


def _hist(ax: Any, series: dict[str, np.ndarray], xlabel: str) -> None:
    data = {k: _floats(vs) for k, vs in series.items()}
    nonempty = [vs for vs in data.values() if vs.size]
    if not nonempty:
        ax.text(0.5, 0.5, "no scores (scoring off?)", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = min(float(vs.min()) for vs in nonempty), max(float(vs.max()) for vs in nonempty)
    bins = 30 if hi > lo else 1
    for label, vs in data.items():
        if vs.size:
            ax.hist(
                vs,
                bins=bins,
                range=(lo, hi if hi > lo else lo + 1),
                histtype="step",
                linewidth=1.8,
                density=True,
                label=f"{label} (n={len(vs)}, median {_median(vs):.2f})",
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def write_report(run: RunDir) -> str:
    """Write report/report.md and its PNG plots; returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = scan_samples(
        run, ["problem_id", "kind", "level", "verdict", "nll_mean", "answer_logprob", "hint_leak", "hint_leak_reason"]
    )
    schemas.check(pq.read_schema(run.problems), "problems", where=str(run.problems))
    # Only the numbers the plots need, as compact arrays: never the texts, never Python lists.
    problems = pq.read_table(run.problems, columns=["expert_nll_mean", "expert_answer_logprob"])
    summary = summarize(samples)
    series = _score_series(samples)
    rows = _table_rows(run)
    out = run.report
    out.mkdir(parents=True, exist_ok=True)

    # accuracy by level
    levels = list(summary.by_level)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for k, kind in enumerate(schemas.KINDS):
        acc = [(c.accuracy if (c := summary.by_level[lvl].get(kind)) else None) or 0.0 for lvl in levels]
        ax.bar([i + (k - 0.5) * width for i in range(len(levels))], acc, width, label=kind)
    ax.set_xticks(range(len(levels)), [f"level {lvl}" for lvl in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of samples verified correct")
    ax.set_title("Accuracy by level: plain CoT vs self-explanation")
    ax.legend()
    fig.tight_layout()
    _save(fig, out / PLOTS[0])

    # nll_mean
    expert_nll = _floats(problems.column("expert_nll_mean"))
    fig, ax = plt.subplots(figsize=(7, 4))
    _hist(
        ax,
        {
            "explanation": series["explanation", "nll_mean"],
            "own CoT": series["cot", "nll_mean"],
            "expert solution": expert_nll,
        },
        "mean per-token NLL after the plain prompt (lower = more in-distribution)",
    )
    ax.set_title("In-distribution: nll_mean")
    fig.tight_layout()
    _save(fig, out / PLOTS[1])

    # answer_logprob
    fig, ax = plt.subplots(figsize=(7, 4))
    _hist(
        ax,
        {
            "explanation": series["explanation", "answer_logprob"],
            "own incorrect CoT": series["incorrect cot", "answer_logprob"],
        },
        "log p(\\boxed{gold | prompt, text before its answer); the closing brace is not scored",
    )
    ax.set_title("Answer signal: answer_logprob")
    fig.tight_layout()
    _save(fig, out / PLOTS[2])

    # pairs per level
    per_level = {name: counts for name in PAIR_TABLES if (counts := rows_by_level(run.table(name)))}
    all_levels = sorted({lvl for d in per_level.values() for lvl in d} | set(levels))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.2
    for k, name in enumerate(PAIR_TABLES):
        vals = [per_level.get(name, {}).get(lvl, 0) for lvl in all_levels]
        ax.bar([i + (k - 1.5) * width for i in range(len(all_levels))], vals, width, label=name)
    ax.set_xticks(range(len(all_levels)), [f"level {lvl}" for lvl in all_levels])
    ax.set_ylabel("rows")
    ax.set_title("Training rows per level")
    ax.legend()
    fig.tight_layout()
    _save(fig, out / PLOTS[3])

    # hint leaks
    expl = samples.filter(pl.col("kind") == "explanation")
    leak_by_level = (
        expl.with_columns(pl.col("level").cast(pl.String).fill_null("none").alias("lvl"))
        .group_by("lvl")
        .agg(pl.col("hint_leak").fill_null(False).mean().alias("rate"), pl.len().alias("n"))
        .sort("lvl")
        .collect(engine="streaming")
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([f"level {r['lvl']}" for r in leak_by_level.iter_rows(named=True)], leak_by_level["rate"].to_list())
    ax.set_ylim(0, max(0.05, float(leak_by_level["rate"].max() or 0) * 1.2))
    ax.set_ylabel("share of explanations flagged")
    ax.set_title("Hint leaks: explanations that cite the given answer")
    fig.tight_layout()
    _save(fig, out / PLOTS[4])

    n_expl = int(leak_by_level["n"].sum()) if leak_by_level.height else 0
    leak_total = int(expl.select(pl.col("hint_leak").fill_null(False).sum()).collect(engine="streaming").item() or 0)
    reasons = (
        expl.filter(pl.col("hint_leak").fill_null(False))
        .group_by("hint_leak_reason")
        .len()
        .sort("len", descending=True)
        .collect(engine="streaming")
    )
    expert_answer = _floats(problems.column("expert_answer_logprob"))
    md = _markdown(
        run, summary, rows, per_level, all_levels, series, expert_nll, expert_answer, n_expl, leak_total, reasons
    )
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    return md


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _markdown(
    run: RunDir,
    summary: RunSummary,
    rows: dict[str, int],
    per_level: dict[str, dict[str, int]],
    levels: list[str],
    series: dict[tuple[str, str], np.ndarray],
    expert_nll: np.ndarray,
    expert_answer: np.ndarray,
    n_expl: int,
    leak_total: int,
    reasons: pl.DataFrame,
) -> str:
    doc = run.read_doc()
    lines = [f"# ExPO run report: {doc.name if doc else run.root.name}", ""]
    if doc is not None and doc.model is not None:
        engine = doc.model.engine or (doc.config.model.engine if doc.config else None)
        template = doc.prompts.version if doc.prompts else "?"
        lines += [f"Model `{doc.model.id}`, engine `{engine}`, prompt template `{template}`.", ""]
    lines += ["## Tables", "", "| table | rows |", "|---|---|", f"| samples | {summary.samples} |"]
    lines += [f"| {name} | {n} |" for name, n in rows.items()]
    lines += ["", "## Accuracy by level", "", "| level | CoT | explanation |", "|---|---|---|"]
    for r in summary_table_rows(summary):
        lines.append(
            f"| {r['level']} | {_fmt(r['cot_accuracy'], True)} ({r['cot_samples']}) | "
            f"{_fmt(r['explanation_accuracy'], True)} ({r['explanation_samples']}) |"
        )
    lines += ["", "![accuracy by level](accuracy_by_level.png)", ""]

    def med(kind: str, col: str) -> str:
        return _fmt(_median(series[kind, col]))

    lines += [
        "## The two ExPO properties (medians)",
        "",
        "| text | nll_mean (lower = in-distribution) | answer_logprob (higher = leads to the gold) |",
        "|---|---|---|",
        f"| self-explanation | {med('explanation', 'nll_mean')} | {med('explanation', 'answer_logprob')} |",
        f"| own CoT | {med('cot', 'nll_mean')} | {med('cot', 'answer_logprob')} |",
        f"| own incorrect CoT | {med('incorrect cot', 'nll_mean')} | {med('incorrect cot', 'answer_logprob')} |",
        f"| expert solution | {_fmt(_median(expert_nll))} | {_fmt(_median(expert_answer))} |",
        "",
        "![nll_mean](nll_mean.png)",
        "",
        "![answer_logprob](answer_logprob.png)",
        "",
        "## Training rows per level",
        "",
        "| level | " + " | ".join(per_level) + " |",
        "|---|" + "---|" * len(per_level),
    ]
    for lvl in levels:
        lines.append(f"| {lvl} | " + " | ".join(str(per_level[n].get(lvl, 0)) for n in per_level) + " |")
    if doc is not None and doc.build is not None and doc.build.problems is not None:
        p = doc.build.problems
        lost = doc.build.dpo_pairs_without_candidate
        lines += [
            "",
            f"{p.paired} of {p.total} problems have an ExP-DPO pair; {p.without_verified_explanation} have no "
            f"verified explanation, {p.without_rejectable_cot} no rejectable CoT. Pairs left out of dpo_expert "
            f"(no expert solution): {lost.get('dpo_expert', 0)}; of dpo_self (no correct own CoT): {lost.get('dpo_self', 0)}.",
        ]
    lines += ["", "![pairs by level](pairs_by_level.png)", "", "## Hint leaks", ""]
    rate = leak_total / n_expl if n_expl else None
    lines.append(
        f"{leak_total} of {n_expl} explanations flagged ({_fmt(rate, True)}); flagged ones stay in `samples` "
        "and are left out of the training sets."
    )
    if reasons.height:
        lines += ["", "| reason | explanations |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in reasons.iter_rows()]
    lines += ["", "![hint leaks](hint_leaks.png)", ""]
    return "\n".join(lines)
