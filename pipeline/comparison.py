"""The conditionings side by side: what each one yields on the same model and problems.

Per conditioning (and per level): how often its texts are right, how often they lean on what they
were shown (leak rate), whether its positives are in-distribution (mean ``nll_mean`` after the
plain prompt) and carry answer signal (mean ``answer_logprob``), what a positive costs (texts and
hint requests generated per usable positive), and how many problems whose every CoT failed it
rescued (gave at least one usable positive). Positives are what the builders could train on:
verified correct and not flagged as a leak.

Aggregate queries over lazy scans of the tables, like :mod:`pipeline.summary`: the texts are never
read. run.json, the report and the dataset card show the same rows.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.store import RunDir, parquet_files, scan_table
from schemas.run_doc import ComparisonRow, ConditioningsDoc, HintStats

COLUMNS = ["problem_id", "kind", "level", "verdict", "hint_leak", "nll_mean", "answer_logprob", "conditioning"]


def _level(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(pl.col("level").cast(pl.String).fill_null("none").alias("lvl"))


def compare(samples: pl.LazyFrame, hints: pl.LazyFrame, variants: dict[str, Any] | None = None) -> ConditioningsDoc:
    """The comparison rows (every conditioning over all levels, then per level) and the hint counts.
    ``variants`` (label -> what run.json records of it) gives each row its kind."""
    variants = variants or {}
    s = _level(samples.select(COLUMNS))
    positive = (pl.col("verdict") == "correct") & ~pl.col("hint_leak").fill_null(False)
    cot_solved = (
        s.filter(pl.col("kind") == "cot")
        .group_by("problem_id")
        .agg((pl.col("verdict") == "correct").any().alias("solved"))
    )
    texts = (
        s.filter(pl.col("kind") == "explanation")
        .join(cot_solved, on="problem_id", how="left")
        .with_columns(positive.alias("pos"), pl.col("solved").fill_null(False))
    )
    hint_counts = (
        _level(hints)
        .group_by("conditioning", "lvl")
        .agg(pl.len().alias("hint_requests"), pl.col("usable").sum().alias("usable"))
        .collect(engine="streaming")
    )
    wrong = _level(s.filter(pl.col("kind") == "cot").join(cot_solved, on="problem_id")).filter(~pl.col("solved"))

    def aggregate(keys: list[str]) -> pl.DataFrame:
        per_problem = (
            texts.group_by(["conditioning", "problem_id", *[k for k in keys if k != "conditioning"]])
            .agg(pl.col("pos").any().alias("has_pos"), pl.col("solved").first())
            .group_by(keys)
            .agg(
                pl.len().alias("problems"),
                (pl.col("has_pos") & ~pl.col("solved")).sum().alias("rescued"),
            )
        )
        stats = texts.group_by(keys).agg(
            pl.len().alias("texts"),
            (pl.col("verdict") == "correct").sum().alias("correct"),
            pl.col("hint_leak").fill_null(False).sum().alias("leaks"),
            pl.col("pos").sum().alias("positives"),
            pl.col("nll_mean").filter(pl.col("pos")).mean().alias("nll_mean"),
            pl.col("answer_logprob").filter(pl.col("pos")).mean().alias("answer_logprob"),
        )
        return stats.join(per_problem, on=keys, how="left").sort(keys).collect(engine="streaming")

    all_wrong = wrong.select(pl.col("problem_id").n_unique()).collect(engine="streaming").item() or 0
    wrong_by_level = dict(
        wrong.group_by("lvl").agg(pl.col("problem_id").n_unique()).collect(engine="streaming").iter_rows()
    )
    rows = []
    for level, frame in (("all", aggregate(["conditioning"])), (None, aggregate(["conditioning", "lvl"]))):
        for r in frame.iter_rows(named=True):
            lvl = level or r["lvl"]
            h = hint_counts.filter(pl.col("conditioning") == r["conditioning"])
            if level is None:
                h = h.filter(pl.col("lvl") == lvl)
            requests = int(h["hint_requests"].sum()) if h.height else 0
            rows.append(
                ComparisonRow(
                    conditioning=r["conditioning"],
                    kind=(variants.get(r["conditioning"]) or {}).get("kind"),
                    level=lvl,
                    problems=int(r["problems"] or 0),
                    texts=int(r["texts"]),
                    accuracy=_ratio(r["correct"], r["texts"]),
                    leak_rate=_ratio(r["leaks"], r["texts"]),
                    positives=int(r["positives"]),
                    nll_mean=_round(r["nll_mean"]),
                    answer_logprob=_round(r["answer_logprob"]),
                    texts_per_positive=_ratio(r["texts"] + requests, r["positives"], digits=2),
                    hint_requests=requests,
                    rescued=int(r["rescued"] or 0),
                    all_wrong=int(all_wrong if level else wrong_by_level.get(lvl, 0)),
                )
            )
    present = {r.conditioning for r in rows}
    for label, v in variants.items():  # a conditioning that could serve no problem is shown as such
        if label not in present:
            requests = hint_counts.filter(pl.col("conditioning") == label)["hint_requests"].sum()
            kind = (v or {}).get("kind")
            rows.append(
                ComparisonRow(
                    conditioning=label, kind=kind, level="all", hint_requests=int(requests), all_wrong=int(all_wrong)
                )
            )
    order = {label: i for i, label in enumerate(variants)}  # as configured
    rows.sort(key=lambda r: (r.level != "all", r.level, order.get(r.conditioning, len(order)), r.conditioning))
    return ConditioningsDoc(variants=variants, comparison=rows, hints=_hint_stats(hints))


def _hint_stats(hints: pl.LazyFrame) -> HintStats | None:
    frame = hints.select("usable", "reject_reason").collect(engine="streaming")
    if frame.height == 0:
        return None
    reasons = frame.filter(~pl.col("usable")).group_by("reject_reason").len().sort("len", descending=True)
    return HintStats(
        written=frame.height,
        usable=int(frame["usable"].sum()),
        rejected_by_reason={str(k): int(v) for k, v in reasons.iter_rows()},
    )


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def compare_run(run: RunDir, variants: dict[str, Any] | None = None) -> ConditioningsDoc:
    samples = scan_table(parquet_files(run.samples), "samples")
    hints_dir = run.folder("hints")
    hints = scan_table(parquet_files(hints_dir) if hints_dir.exists() else [], "hints")
    if variants is None:
        doc = run.read_doc()
        variants = doc.conditionings.variants if doc is not None and doc.conditionings is not None else {}
    return compare(samples, hints, variants)


def table_lines(doc: ConditioningsDoc, level: str | None = "all") -> list[str]:
    """The comparison as a Markdown table (one level; None for every row)."""
    head = [
        "| conditioning | level | problems | texts | accuracy | leak rate | positives | nll_mean | answer_logprob "
        "| texts per positive | rescued / all-wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out = []
    for r in doc.comparison:
        if level is not None and r.level != level:
            continue
        out.append(
            f"| {r.conditioning} | {r.level} | {r.problems} | {r.texts} | {_pct(r.accuracy)} | {_pct(r.leak_rate)} "
            f"| {r.positives} | {_num(r.nll_mean)} | {_num(r.answer_logprob)} | {_num(r.texts_per_positive, 1)} "
            f"| {r.rescued} / {r.all_wrong} |"
        )
    return [*head, *out]


def comparison_plot(doc: ConditioningsDoc) -> Any:
    """Per conditioning: accuracy, leak rate and the share of all-wrong problems rescued (left);
    its positives' two ExPO scores (right)."""
    import matplotlib.pyplot as plt

    rows = [r for r in doc.comparison if r.level == "all"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r.conditioning for r in rows]
    width = 0.27
    bars = {
        "accuracy": [r.accuracy or 0.0 for r in rows],
        "leak rate": [r.leak_rate or 0.0 for r in rows],
        "rescued / all-wrong": [r.rescued / r.all_wrong if r.all_wrong else 0.0 for r in rows],
    }
    for k, (label, vals) in enumerate(bars.items()):
        left.bar([i + (k - 1) * width for i in range(len(rows))], vals, width, label=label)
    left.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
    left.set_ylim(0, 1)
    left.set_title("What each conditioning yields")
    left.legend(fontsize=8)
    for r in rows:
        if r.nll_mean is not None and r.answer_logprob is not None:
            right.scatter([r.nll_mean], [r.answer_logprob], s=40)
            right.annotate(r.conditioning, (r.nll_mean, r.answer_logprob), fontsize=8)
    right.set_xlabel("mean nll_mean of positives (lower = in-distribution)")
    right.set_ylabel("mean answer_logprob of positives")
    right.set_title("Positives: in-distribution vs answer signal")
    if not any(r.nll_mean is not None for r in rows):
        right.text(0.5, 0.5, "no scored positives", ha="center", va="center", transform=right.transAxes)
    return fig


def comparison_section(doc: ConditioningsDoc) -> list[str]:
    """The report's section: the table over all levels, the plot, then per level."""
    lines = [
        "## Conditionings compared",
        "",
        "Every conditioned text, scored after the *plain* prompt. Positives: verified correct and not flagged. "
        "nll_mean and answer_logprob are means over positives; texts per positive counts hint requests too; "
        "rescued: problems whose every CoT failed that got a positive.",
        "",
        *table_lines(doc, "all"),
        "",
        "![conditionings](conditionings.png)",
        "",
    ]
    levels = sorted({r.level for r in doc.comparison if r.level != "all"})
    if len(levels) > 1:
        lines += ["By level:", "", *table_lines(doc, None)[:2]]
        lines += [x for lvl in levels for x in table_lines(doc, lvl)[2:]]
        lines.append("")
    if doc.hints is not None:
        h = doc.hints
        reasons = ", ".join(f"{k} {v}" for k, v in h.rejected_by_reason.items()) or "none"
        lines += [f"Abstract hints: {h.usable} of {h.written} usable (refused: {reasons}).", ""]
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
