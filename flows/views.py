"""How the command line draws things: progress bars for pipeline events, the accuracy table, a
run's tables, inspect's rows, pass@k and the online loop's rounds. Drawing only; what is drawn
comes from the library."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import schemas
from schemas.run_doc import ProblemsSummary, RunDoc, RunSummary


class _Masked:
    """A terminal stream that masks credentials in everything written through it. The real stream
    is looked up at each write, so whoever swaps ``sys.stdout`` (a test runner) still gets it."""

    def __init__(self, name: str):
        self._name = name

    def write(self, text: str) -> int:
        from pipeline.secrets import redact

        return getattr(sys, self._name).write(redact(text))

    def __getattr__(self, attr: str) -> Any:
        return getattr(getattr(sys, self._name), attr)


console = Console(file=_Masked("stdout"))
err_console = Console(file=_Masked("stderr"))
T = TypeVar("T")


def error(message: str) -> None:
    # soft_wrap: the terminal wraps a long message; rich would break paths in it with newlines.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if value <= 1 else f"{value:.2f}"
    return str(value)


def print_summary(summary: RunSummary, problems: ProblemsSummary | None = None) -> None:
    from pipeline.summary import summary_table_rows

    if problems is not None:
        rejected = ", ".join(f"{k}: {v}" for k, v in problems.rejected_by_reason.items()) or "none"
        console.print(
            f"problems: [bold]{problems.valid}[/] valid of {problems.rows_read} read; "
            f"rejected {problems.rejected} ({escape(rejected)}); filtered out {problems.filtered_out}"
        )
    table = Table(title="accuracy by level (share of samples verified correct)")
    for col in ("level", "CoT", "CoT samples", "explanation", "explanation samples"):
        table.add_column(col, justify="right")
    for row in summary_table_rows(summary):
        table.add_row(
            row["level"],
            fmt(row["cot_accuracy"]),
            str(row["cot_samples"]),
            fmt(row["explanation_accuracy"]),
            str(row["explanation_samples"]),
        )
    console.print(table)
    for kind, k in summary.by_kind.items():
        verdicts = ", ".join(f"{v}: {n}" for v, n in k.verdicts.items() if n)
        console.print(
            f"{kind}: {k.samples} samples ({verdicts}); "
            f"{k.problems_with_a_correct_sample}/{k.problems} problems with a correct sample"
        )


def print_comparison(doc: RunDoc) -> None:
    """The conditionings side by side (over all levels), when a run made more than ExPO's own."""
    c = doc.conditionings
    if c is None or len(c.variants) < 2:
        return
    # Plain aligned lines, not a rich Table: a narrow terminal would cut the numbers to "…".
    rows = [r for r in c.comparison if r.level == "all"]
    width = max(len("conditioning"), *(len(r.conditioning) for r in rows))
    head = ("texts", "acc", "leaks", "pos", "nll", "ans lp", "cost", "rescued")
    console.print("[bold]conditionings compared[/]")
    console.print(f"{'conditioning':<{width}} " + " ".join(f"{h:>7}" for h in head), highlight=False, soft_wrap=True)
    for r in rows:
        cells = (
            str(r.texts),
            fmt(r.accuracy),
            fmt(r.leak_rate),
            str(r.positives),
            "-" if r.nll_mean is None else f"{r.nll_mean:.3f}",
            "-" if r.answer_logprob is None else f"{r.answer_logprob:.3f}",
            "-" if r.texts_per_positive is None else f"{r.texts_per_positive:.1f}",
            f"{r.rescued}/{r.all_wrong}",
        )
        line = f"{r.conditioning:<{width}} " + " ".join(f"{x:>7}" for x in cells)
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(
        "pos: positives (verified, not flagged); nll / ans lp: their mean nll_mean and answer_logprob after the "
        "plain prompt; cost: texts and hint requests per positive; rescued: of the problems whose CoTs all failed"
    )
    if c.hints is not None:
        console.print(f"abstract hints: {c.hints.usable} of {c.hints.written} usable")


def print_curation(doc: RunDoc) -> None:
    """What curation did: each applied rule's removals, the validation split, what
    ``explanations_for`` saved; one line when no rule applied."""
    build = doc.build
    if build is None or build.funnel is None:
        return
    applied = [st for st in build.funnel.steps if st.applied]
    for st in applied:
        removed = ", ".join(f"{t} {n}" for t, n in st.removed.items() if n) or "nothing"
        console.print(f"curation: {st.rule} ({st.setting}) removed {removed}", highlight=False)
    if not applied:
        console.print("curation: no rule applied (report/report.md shows what each would remove)")
    if build.validation_rows:
        rows = ", ".join(f"{t} {n}" for t, n in build.validation_rows.items() if n)
        console.print(f"validation split: {build.validation_problems} problems ({rows})", highlight=False)
    e = doc.explanations_for
    if e is not None:
        entries = ", ".join(f"{k} {n}" for k, n in e.texts_skipped_by_entry.items())
        console.print(
            f"explanations_for {e.setting}: {e.problems_skipped} of {e.problems} problems skipped, "
            f"{e.texts_skipped} texts ({entries or 'none'}) and {e.hint_requests_skipped} hint requests not "
            f"generated (~{e.est_tokens_saved or 0} tokens)",
            highlight=False,
        )


def print_decontamination(check: Any, shown: int = 10) -> None:
    """``expo-data decontaminate``: the overlapping rows (the first ``shown``) and the counts."""
    against = ", ".join(f"{b} ({n})" for b, n in check.benchmarks.items())
    if check.findings:
        table = Table(title=f"rows that overlap a benchmark (first {min(shown, len(check.findings))})")
        for col in ("row", "problem id", "benchmark row", "shared"):
            table.add_column(col)
        for f in check.findings[:shown]:
            table.add_row(str(f.row.row), f.row.problem_id or "-", f.match.entry.describe(), f.match.shared)
        console.print(table)
    console.print(
        f"{len(check.findings)} of {check.checked} rows overlap {against} "
        f"(index {check.index_s:.2f}s, check {check.check_s:.2f}s)",
        highlight=False,
    )


def print_run_end(run_dir: str, doc: RunDoc) -> None:
    """The summary (and the conditionings compared), then where each table landed with its rows."""
    print_summary(doc.summary or RunSummary(), doc.problems)
    print_comparison(doc)
    print_curation(doc)
    total = doc.timings.total_s if doc.timings and doc.timings.total_s else 0.0
    console.print(f"\nrun dir: [bold]{run_dir}[/] (total {total:.1f}s)")
    for name in (*schemas.SHOWN, "report"):
        count = doc.rows(name)
        suffix = f"  ({count} rows)" if count is not None else ""
        console.print(f"  {name + '/':<20} {Path(run_dir) / name}{suffix}")
    console.print(f"  {'run.json':<20} {Path(run_dir) / 'run.json'}")


def _truncate(value: Any, width: int) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "content" in value[0]:
        value = " | ".join(f"{m['role']}: {m['content']}" for m in value)
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_inspection(doc: RunDoc | None, peeks: list[Any], width: int, rendered: tuple[list, str | None]) -> None:
    if doc is not None:
        model = doc.model.id if doc.model else "?"
        engine = doc.model.engine if doc.model else "?"
        template = doc.prompts.version if doc.prompts else "?"
        console.print(
            f"[bold]{escape(doc.name)}[/]  model {escape(str(model))} ({engine}), template {template}, "
            f"expo-data {doc.expo_data_version}, updated {doc.updated}",
            highlight=False,
        )
    else:
        console.print("[yellow]no run.json: the run has not finished (or this is not a run dir)[/]")
    for peek in peeks:
        if not peek.present:
            console.print(f"\n[bold]{peek.name}[/]: missing")
            continue
        if peek.error is not None:
            console.print(f"\n[bold]{peek.name}[/]: [red]unreadable: {escape(peek.error)}[/]")
            continue
        console.print(f"\n[bold]{peek.name}[/]: {peek.rows} rows, {len(schemas.schema(peek.name).names)} columns")
        if peek.verdicts:
            console.print("  " + ", ".join(f"{k}/{v}: {n}" for (k, v), n in peek.verdicts.items()))
        # One small field/value table per row: readable at any terminal width, unlike 22 columns.
        for i, r in peek.shown:
            view = Table(title=f"{peek.name} row {i}", show_header=False, title_justify="left")
            view.add_column("field", style="bold", no_wrap=True)
            view.add_column("value", overflow="fold")
            for col in peek.columns:
                view.add_row(col, escape(_truncate(r[col], width)))
            console.print(view)
    prompts, note = rendered
    for p in prompts:
        console.print(
            f"\n[bold]{p.kind} prompt as the model saw it[/] ({escape(p.sample_id)}, through its chat template):"
        )
        console.print(p.text, highlight=False, markup=False)
    if note:
        console.print(f"\n[yellow]{escape(note)}[/]")
    for warning in doc.prompts.warnings if doc is not None and doc.prompts else []:
        console.print(f"\n[yellow]prompts: {escape(warning)}[/]")
    if doc is not None and doc.summary is not None:
        console.print()
        print_summary(doc.summary, doc.problems)


def print_eval(result: dict[str, Any], title: str) -> None:
    ks = [f"pass@{k}" for k in result["ks"]]
    table = Table(title=title)
    for col in ("level", "problems", *ks):
        table.add_column(col, justify="right")
    rows = [*result["by_level"].items(), ("all", result["overall"])]
    for level, vals in rows:
        table.add_row(level, str(vals["problems"]), *(fmt(vals[k]) for k in ks))
    console.print(table)


def print_rounds(rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r if c != "policy"))
    table = Table(title="held-out accuracy per round")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) if "pass@" in c else ("-" if r.get(c) is None else f"{r[c]:.4g}") for c in cols))
    console.print(table)


class ProgressView:
    """Renders pipeline.progress events from the flow as rich progress bars."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.tasks: dict[str, Any] = {}

    def _done(self, key: str, description: str) -> None:
        if key in self.tasks:
            self.p.update(self.tasks[key], total=1, completed=1, description=description)

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        handler = getattr(self, "on_" + event.replace(".", "_"), None)
        if handler is not None:
            handler(data)

    def on_problems_start(self, data: dict[str, Any]) -> None:
        self.tasks["problems"] = self.p.add_task("loading and validating problems", total=None)

    def on_problems_progress(self, data: dict[str, Any]) -> None:
        if "problems" in self.tasks:
            description = f"validated {data['valid']} problems ({data['read']} rows read)"
            self.p.update(self.tasks["problems"], description=description)

    def on_problems_done(self, data: dict[str, Any]) -> None:
        self._done("problems", f"problems: {data['valid']} valid, {data['rejected']} rejected")

    def on_engine_loading(self, data: dict[str, Any]) -> None:
        self.tasks["engine"] = self.p.add_task(f"loading the {data['engine']} engine", total=None)

    def on_engine_ready(self, data: dict[str, Any]) -> None:
        self._done("engine", f"{data['engine']} engine ready ({data['seconds']}s)")

    def on_shards_planned(self, data: dict[str, Any]) -> None:
        self.tasks["shards"] = self.p.add_task("shards", total=data["total"])

    def on_shard_start(self, data: dict[str, Any]) -> None:
        if "shards" in self.tasks:
            description = f"shard {data['index']}: generating {data['requests']} requests"
            self.p.update(self.tasks["shards"], description=description)

    def on_shard_done(self, data: dict[str, Any]) -> None:
        if "shards" in self.tasks:
            self.p.update(self.tasks["shards"], description=f"shard {data['index']}: {data.get('rows', 0)} rows")

    def on_shard_skipped(self, data: dict[str, Any]) -> None:
        if "shards" in self.tasks:
            self.p.update(self.tasks["shards"], description=f"shard {data['index']}: skipped (done)")

    def on_shard_finished(self, data: dict[str, Any]) -> None:
        if "shards" in self.tasks:
            self.p.update(self.tasks["shards"], advance=1)

    def on_online_round(self, data: dict[str, Any]) -> None:
        self.p.console.print(f"[bold]round {data['round']}[/]: {escape(str(data['step']))}", highlight=False)

    def on_experiment_step(self, data: dict[str, Any]) -> None:
        self.p.console.print(f"[bold]experiment[/]: {escape(str(data['step']))}", highlight=False)

    def on_experiment_unit(self, data: dict[str, Any]) -> None:
        """One line per finished arm and seed; its training and evaluation bars go (dozens of them
        would otherwise stay on the terminal)."""
        for task_id in list(self.p.task_ids):
            self.p.remove_task(task_id)
        self.tasks.clear()
        passes = ", ".join(f"{k} {v:.1%}" for k, v in data["passes"].items() if v is not None)
        what = passes or escape(str(data.get("reason") or "no score"))
        when = "done before" if data.get("before") else f"{data.get('seconds') or 0:.0f}s"
        self.p.console.print(f"[bold]{data['arm']}[/] seed {data['seed']}: {what} ({when})", highlight=False)

    def on_train_start(self, data: dict[str, Any]) -> None:
        total = data["max_steps"] if data["max_steps"] > 0 else None
        self.tasks["train"] = self.p.add_task(f"training {data['kind']}", total=total)

    def on_train_log(self, data: dict[str, Any]) -> None:
        if "train" in self.tasks:
            loss = f", loss {data['loss']:.4f}" if data.get("loss") is not None else ""
            self.p.update(self.tasks["train"], completed=data["step"], description=f"training {data['kind']}{loss}")

    def on_eval_start(self, data: dict[str, Any]) -> None:
        description = f"evaluating {data['problems']} problems x {data['samples']}"
        self.tasks["eval"] = self.p.add_task(description, total=None)

    def on_eval_done(self, data: dict[str, Any]) -> None:
        passes = ", ".join(f"{k} {v:.1%}" for k, v in data.items() if k.startswith("pass@"))
        self._done("eval", f"evaluated: {passes}")


def with_progress(fn: Callable[[], T]) -> T:
    """Run ``fn`` with the pipeline's progress events drawn as rich progress bars."""
    from pipeline import progress as events

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        unsubscribe = events.subscribe(ProgressView(progress))
        try:
            return fn()
        finally:
            unsubscribe()
