"""The run report: what a researcher checks before training on a run.

Everything is recomputed from the tables in the run dir (never from memory of the run), so
``expo-data report RUN_DIR`` rebuilds the same page at any time: accuracy by level for CoT vs
explanations, the two ExPO scores by kind of text, pair counts per level, hint leaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.comparison import compare_run, comparison_plot, comparison_section
from pipeline.curation import funnel_section
from pipeline.store import RunDir, atomic_write, parquet_rows, rows_by_level
from pipeline.summary import scan_samples, summarize, summary_table_rows
from schemas.run_doc import ConditioningsDoc, RunDoc, RunSummary

PLOTS = (
    "accuracy_by_level.png",
    "nll_mean.png",
    "answer_logprob.png",
    "pairs_by_level.png",
    "hint_leaks.png",
    "conditionings.png",
)


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


PAIR_TABLES = tuple(name for name in schemas.DATASETS if name != "grpo")  # a row per pair or text


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


@dataclass
class ReportData:
    """Everything the report shows, gathered once from the tables: aggregates and the plotted
    scores as float arrays, never the texts."""

    summary: RunSummary
    series: dict[tuple[str, str], np.ndarray]
    expert_nll: np.ndarray
    expert_answer: np.ndarray
    rows: dict[str, int]
    per_level: dict[str, dict[str, int]]
    levels: list[str]
    leak_by_level: pl.DataFrame
    leak_total: int
    leak_reasons: pl.DataFrame
    read_by: pl.DataFrame  # texts per kind and how their final answer was found
    other_policy: pl.DataFrame  # texts the other extraction policy reads otherwise: verdict -> its verdict
    conditionings: ConditioningsDoc

    @property
    def explanations(self) -> int:
        return int(self.leak_by_level["n"].sum()) if self.leak_by_level.height else 0


def gather(run: RunDir) -> ReportData:
    samples = scan_samples(
        run,
        [
            "problem_id",
            "kind",
            "level",
            "verdict",
            "extracted_by",
            "alt_verdict",
            "nll_mean",
            "answer_logprob",
            "hint_leak",
            "hint_leak_reason",
        ],
    )
    schemas.check(pq.read_schema(run.problems), "problems", where=str(run.problems))
    problems = pq.read_table(run.problems, columns=["expert_nll_mean", "expert_answer_logprob"])
    summary = summarize(samples)
    per_level = {name: counts for name in PAIR_TABLES if (counts := rows_by_level(run.table(name)))}
    flagged = pl.col("hint_leak").fill_null(False)
    expl = samples.filter(pl.col("kind") == "explanation")
    leak_by_level = (
        expl.with_columns(pl.col("level").cast(pl.String).fill_null("none").alias("lvl"))
        .group_by("lvl")
        .agg(flagged.mean().alias("rate"), pl.len().alias("n"))
        .sort("lvl")
        .collect(engine="streaming")
    )
    return ReportData(
        summary=summary,
        series=_score_series(samples),
        expert_nll=_floats(problems.column("expert_nll_mean")),
        expert_answer=_floats(problems.column("expert_answer_logprob")),
        rows=_table_rows(run),
        per_level=per_level,
        levels=sorted({lvl for d in per_level.values() for lvl in d} | set(summary.by_level)),
        leak_by_level=leak_by_level,
        leak_total=int(expl.select(flagged.sum()).collect(engine="streaming").item() or 0),
        leak_reasons=expl.filter(flagged)
        .group_by("hint_leak_reason")
        .len()
        .sort("len", descending=True)
        .collect(engine="streaming"),
        read_by=samples.group_by("kind", "extracted_by").len().sort("kind", "extracted_by").collect(engine="streaming"),
        other_policy=samples.filter(pl.col("alt_verdict").is_not_null())
        .group_by("kind", "verdict", "alt_verdict")
        .len()
        .sort("kind", "verdict", "alt_verdict")
        .collect(engine="streaming"),
        conditionings=compare_run(run),
    )


def write_report(run: RunDir) -> str:
    """Write report/report.md and its PNG plots; returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    data = gather(run)
    out = run.report
    out.mkdir(parents=True, exist_ok=True)
    plots = (_plot_accuracy, _plot_nll, _plot_answer, _plot_pairs, _plot_leaks, _plot_conditionings)
    for plot, name in zip(plots, PLOTS, strict=True):
        _save(plot(data), out / name)
    md = _markdown(run.read_doc(), run.root.name, data)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    return md


def _figure() -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


def _plot_accuracy(data: ReportData) -> Any:
    levels = list(data.summary.by_level)
    fig, ax = _figure()
    width = 0.38
    for k, kind in enumerate(schemas.KINDS):
        acc = [(c.accuracy if (c := data.summary.by_level[lvl].get(kind)) else None) or 0.0 for lvl in levels]
        ax.bar([i + (k - 0.5) * width for i in range(len(levels))], acc, width, label=kind)
    ax.set_xticks(range(len(levels)), [f"level {lvl}" for lvl in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of samples verified correct")
    ax.set_title("Accuracy by level: plain CoT vs self-explanation")
    ax.legend()
    return fig


def _hist_figure(series: dict[str, np.ndarray], xlabel: str, title: str) -> Any:
    fig, ax = _figure()
    _hist(ax, series, xlabel)
    ax.set_title(title)
    return fig


def _plot_nll(data: ReportData) -> Any:
    return _hist_figure(
        {
            "explanation": data.series["explanation", "nll_mean"],
            "own CoT": data.series["cot", "nll_mean"],
            "expert solution": data.expert_nll,
        },
        "mean per-token NLL after the plain prompt (lower = more in-distribution)",
        "In-distribution: nll_mean",
    )


def _plot_answer(data: ReportData) -> Any:
    return _hist_figure(
        {
            "explanation": data.series["explanation", "answer_logprob"],
            "own incorrect CoT": data.series["incorrect cot", "answer_logprob"],
        },
        "log p(\\boxed{gold | prompt, text before its answer); the closing brace is not scored",
        "Answer signal: answer_logprob",
    )


def _plot_pairs(data: ReportData) -> Any:
    fig, ax = _figure()
    width = 0.2
    for k, name in enumerate(PAIR_TABLES):
        vals = [data.per_level.get(name, {}).get(lvl, 0) for lvl in data.levels]
        ax.bar([i + (k - 1.5) * width for i in range(len(data.levels))], vals, width, label=name)
    ax.set_xticks(range(len(data.levels)), [f"level {lvl}" for lvl in data.levels])
    ax.set_ylabel("rows")
    ax.set_title("Training rows per level")
    ax.legend()
    return fig


def _plot_leaks(data: ReportData) -> Any:
    leaks = data.leak_by_level
    fig, ax = _figure()
    ax.bar([f"level {r['lvl']}" for r in leaks.iter_rows(named=True)], leaks["rate"].to_list())
    ax.set_ylim(0, max(0.05, float(leaks["rate"].max() or 0) * 1.2))
    ax.set_ylabel("share of explanations flagged")
    ax.set_title("Hint leaks: explanations that cite the given answer")
    return fig


def _plot_conditionings(data: ReportData) -> Any:
    return comparison_plot(data.conditionings)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _markdown(doc: RunDoc | None, fallback_name: str, data: ReportData) -> str:
    lines = [f"# ExPO run report: {doc.name if doc else fallback_name}", ""]
    if doc is not None and doc.model is not None:
        engine = doc.model.engine or (doc.config.model.engine if doc.config else None)
        template = doc.prompts.version if doc.prompts else "?"
        lines += [f"Model `{doc.model.id}`, engine `{engine}`, prompt template `{template}`.", ""]
    lines += ["## Tables", "", "| table | rows |", "|---|---|", f"| samples | {data.summary.samples} |"]
    lines += [f"| {name} | {n} |" for name, n in data.rows.items()]
    lines += ["", "## Accuracy by level", "", "| level | CoT | explanation |", "|---|---|---|"]
    for r in summary_table_rows(data.summary):
        lines.append(
            f"| {r['level']} | {_fmt(r['cot_accuracy'], True)} ({r['cot_samples']}) | "
            f"{_fmt(r['explanation_accuracy'], True)} ({r['explanation_samples']}) |"
        )
    if len(data.conditionings.variants) > 1:
        lines += [
            "",
            "Explanation: every conditioned text, whatever it was conditioned on; each conditioning apart below.",
        ]
    lines += ["", "![accuracy by level](accuracy_by_level.png)", ""]
    lines += _properties_section(data) + _rows_section(doc, data) + funnel_section(doc) + _leaks_section(data)
    lines += _extraction_section(doc, data) + comparison_section(data.conditionings)
    return "\n".join(lines)


def _properties_section(data: ReportData) -> list[str]:
    def med(kind: str, col: str) -> str:
        return _fmt(_median(data.series[kind, col]))

    return [
        "## The two ExPO properties (medians)",
        "",
        "| text | nll_mean (lower = in-distribution) | answer_logprob (higher = leads to the gold) |",
        "|---|---|---|",
        f"| self-explanation | {med('explanation', 'nll_mean')} | {med('explanation', 'answer_logprob')} |",
        f"| own CoT | {med('cot', 'nll_mean')} | {med('cot', 'answer_logprob')} |",
        f"| own incorrect CoT | {med('incorrect cot', 'nll_mean')} | {med('incorrect cot', 'answer_logprob')} |",
        f"| expert solution | {_fmt(_median(data.expert_nll))} | {_fmt(_median(data.expert_answer))} |",
        "",
        "![nll_mean](nll_mean.png)",
        "",
        "![answer_logprob](answer_logprob.png)",
        "",
    ]


def _rows_section(doc: RunDoc | None, data: ReportData) -> list[str]:
    per_level = data.per_level
    lines = [
        "## Training rows per level",
        "",
        "| level | " + " | ".join(per_level) + " |",
        "|---|" + "---|" * len(per_level),
    ]
    for lvl in data.levels:
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
    return [*lines, "", "![pairs by level](pairs_by_level.png)", ""]


def _leaks_section(data: ReportData) -> list[str]:
    n_expl = data.explanations
    rate = data.leak_total / n_expl if n_expl else None
    lines = [
        "## Hint leaks",
        "",
        f"{data.leak_total} of {n_expl} explanations flagged ({_fmt(rate, True)}); flagged ones stay in `samples` "
        "and are left out of the training sets.",
    ]
    if data.leak_reasons.height:
        lines += ["", "| reason | explanations |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in data.leak_reasons.iter_rows()]
    return [*lines, "", "![hint leaks](hint_leaks.png)", ""]


def _extraction_section(doc: RunDoc | None, data: ReportData) -> list[str]:
    """How final answers were found, and what the other extraction policy would have labelled
    differently: the cost of the policy, in rows."""
    policy = doc.config.verifier.extraction if doc is not None and doc.config is not None else "boxed_or_final"
    other = "boxed" if policy == "boxed_or_final" else "boxed_or_final"
    lines = [
        f"## Answer extraction (`verifier.extraction: {policy}`)",
        "",
        "| text | final box | several boxes read together | final-answer statement | no answer |",
        "|---|---|---|---|---|",
    ]
    counts = {(r["kind"], r["extracted_by"]): r["len"] for r in data.read_by.iter_rows(named=True)}
    for kind in schemas.KINDS:
        cells = [str(counts.get((kind, by), 0)) for by in ("box", "boxes", "statement", None)]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    changes = list(data.other_policy.iter_rows(named=True))
    total = sum(r["len"] for r in changes)
    lines += ["", f"Under `{other}`, {total} text(s) would be read otherwise" + (":" if changes else ".")]
    if changes:
        lines += ["", f"| text | verdict now | under `{other}` | texts |", "|---|---|---|---|"]
        lines += [f"| {r['kind']} | {r['verdict']} | {r['alt_verdict']} | {r['len']} |" for r in changes]
    return [*lines, ""]
