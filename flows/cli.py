"""The `expo-data` command line: run, inspect, verify, report, train, eval, online, tiny-model build.

Errors a user can fix (bad config, bad problem file, a run dir made with another config) print one
clear message and exit with status 2; only real bugs show a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="ExPO training data: generate, verify, inspect, train, evaluate."
)
tiny_app = typer.Typer(no_args_is_help=True, help="The tiny offline model used by tests and the quickstart.")
app.add_typer(tiny_app, name="tiny-model")
console = Console(stderr=False)
err_console = Console(stderr=True)


def _quiet_defaults(verbose: bool) -> None:
    """Before Prefect/vLLM are imported: no telemetry, and their INFO chatter only with --verbose."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server Prefect starts when none is configured needs more than its default
    # 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose:
        import logging
        import warnings

        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        logging.getLogger("torch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # TRL warns about any vLLM newer than it was tested with; its vLLM path is not ours.
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")


def _fail(message: str) -> None:
    from pipeline.secrets import redact

    err_console.print(f"[bold red]error:[/] {redact(message)}", highlight=False)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    from pipeline.config import ConfigError
    from pipeline.engines import EngineError
    from pipeline.generate import RunDirConflictError, ShardFailedError
    from pipeline.problems import ProblemsError
    from pipeline.train.data import TrainDataError
    from pipeline.train.run import TrainedAlreadyError
    from schemas import SchemaError

    return (
        ConfigError,
        ProblemsError,
        RunDirConflictError,
        ShardFailedError,
        SchemaError,
        EngineError,
        FileNotFoundError,
        TrainDataError,
        TrainedAlreadyError,
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if value <= 1 else f"{value:.2f}"
    return str(value)


def print_summary(summary: dict[str, Any], problems: dict[str, Any] | None = None) -> None:
    from pipeline.report import summary_table_rows

    if problems:
        rejected = ", ".join(f"{k}: {v}" for k, v in problems["rejected_by_reason"].items()) or "none"
        console.print(
            f"problems: [bold]{problems['valid']}[/] valid of {problems['rows_read']} read; "
            f"rejected {problems['rejected']} ({rejected}); filtered out {problems['filtered_out']}"
        )
    table = Table(title="accuracy by level (share of samples verified correct)")
    for col in ("level", "CoT", "CoT samples", "explanation", "explanation samples"):
        table.add_column(col, justify="right")
    for row in summary_table_rows(summary):
        table.add_row(
            row["level"],
            _fmt(row["cot_accuracy"]),
            str(row["cot_samples"]),
            _fmt(row["explanation_accuracy"]),
            str(row["explanation_samples"]),
        )
    console.print(table)
    for kind, k in summary["by_kind"].items():
        verdicts = ", ".join(f"{v}: {n}" for v, n in k["verdicts"].items() if n)
        console.print(
            f"{kind}: {k['samples']} samples ({verdicts}); "
            f"{k['problems_with_a_correct_sample']}/{k['problems']} problems with a correct sample"
        )


class _ProgressView:
    """Renders pipeline.progress events from the flow as rich progress bars."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.problems_task = None
        self.shards_task = None
        self.engine_task = None
        self.train_task = None
        self.eval_task = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "problems.start":
            self.problems_task = self.p.add_task("loading and validating problems", total=None)
        elif event == "problems.progress" and self.problems_task is not None:
            self.p.update(
                self.problems_task, description=f"validated {data['valid']} problems ({data['read']} rows read)"
            )
        elif event == "problems.done" and self.problems_task is not None:
            self.p.update(
                self.problems_task,
                total=1,
                completed=1,
                description=f"problems: {data['valid']} valid, {data['rejected']} rejected",
            )
        elif event == "engine.loading":
            self.engine_task = self.p.add_task(f"loading the {data['engine']} engine", total=None)
        elif event == "engine.ready" and self.engine_task is not None:
            self.p.update(
                self.engine_task,
                total=1,
                completed=1,
                description=f"{data['engine']} engine ready ({data['seconds']}s)",
            )
        elif event == "shards.planned":
            self.shards_task = self.p.add_task("shards", total=data["total"])
        elif event == "shard.start" and self.shards_task is not None:
            self.p.update(
                self.shards_task,
                description=f"shard {data['index']}: generating {data['requests']} requests",
            )
        elif event in ("shard.done", "shard.skipped") and self.shards_task is not None:
            verb = "skipped (done)" if event == "shard.skipped" else f"{data.get('rows', 0)} rows"
            self.p.update(self.shards_task, description=f"shard {data['index']}: {verb}")
        elif event == "shard.finished" and self.shards_task is not None:
            self.p.update(self.shards_task, advance=1)
        elif event == "online.round":
            self.p.console.print(f"[bold]round {data['round']}[/]: {data['step']}", highlight=False)
        elif event == "train.start":
            total = data["max_steps"] if data["max_steps"] > 0 else None
            self.train_task = self.p.add_task(f"training {data['kind']}", total=total)
        elif event == "train.log" and self.train_task is not None:
            loss = f", loss {data['loss']:.4f}" if data.get("loss") is not None else ""
            self.p.update(self.train_task, completed=data["step"], description=f"training {data['kind']}{loss}")
        elif event == "eval.start":
            self.eval_task = self.p.add_task(f"evaluating {data['problems']} problems x {data['samples']}", total=None)
        elif event == "eval.done" and self.eval_task is not None:
            passes = ", ".join(f"{k} {v:.1%}" for k, v in data.items() if k.startswith("pass@"))
            self.p.update(self.eval_task, total=1, completed=1, description=f"evaluated: {passes}")


def _with_progress(fn: Any) -> Any:
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
        unsubscribe = events.subscribe(_ProgressView(progress))
        try:
            return fn()
        finally:
            unsubscribe()


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML), e.g. data/quickstart.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set generation.rollouts=4")] = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="discard an existing run in output_dir")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect and engine logs")] = False,
) -> None:
    """Generate CoT rollouts, self-explanations and verdicts; write the run dir."""
    _quiet_defaults(verbose)
    from pipeline.config import load_config

    errors = _user_errors()
    try:
        cfg = load_config(config, set_ or [])
    except errors as e:
        _fail(str(e))
    console.print(
        f"[bold]expo-data run[/] {cfg.name}: model {cfg.model.path} ({cfg.model.engine}), "
        f"problems {cfg.problems.source}, G={cfg.generation.rollouts}, "
        f"explanations={cfg.generation.explanations} -> {cfg.output_dir}",
        highlight=False,
    )
    from flows.generate import generate_flow

    try:
        run_dir = _with_progress(lambda: generate_flow(str(config), overrides=set_ or [], force_new=force_new))
    except errors as e:
        _fail(str(e))
    from pipeline.store import RunDir

    doc = RunDir(run_dir).load_run_json() or {}
    print_summary(doc.get("summary", {"by_level": {}, "by_kind": {}}), doc.get("problems"))
    console.print(f"\nrun dir: [bold]{run_dir}[/] (total {doc.get('timings', {}).get('total_s', 0):.1f}s)")
    rows = doc.get("tables") or {}
    for name in ("problems", "problems_rejected", "samples", "dpo", "dpo_expert", "dpo_self", "grpo", "sft", "report"):
        count = rows.get(name, {}).get("rows")
        suffix = f"  ({count} rows)" if count is not None else ""
        console.print(f"  {name + '/':<20} {Path(run_dir) / name}{suffix}")
    console.print(f"  {'run.json':<20} {Path(run_dir) / 'run.json'}")


def _truncate(value: Any, width: int) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "content" in value[0]:
        value = " | ".join(f"{m['role']}: {m['content']}" for m in value)
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="a run dir written by `expo-data run`")],
    rows: Annotated[int, typer.Option(help="rows to show per table")] = 3,
    width: Annotated[int, typer.Option(help="characters per value")] = 200,
) -> None:
    """Counts and a few rows of every table in a run dir."""
    from pipeline.store import RunDir, read_table
    from schemas import DATASETS, TABLES

    run = RunDir(run_dir)
    if not run.root.is_dir():
        _fail(f"no such run dir: {run_dir}")
    doc = run.load_run_json()
    if doc:
        console.print(
            f"[bold]{doc['name']}[/]  model {doc['model']['id']} ({doc['model']['engine']}), "
            f"template {doc['prompts']['version']}, expo-data {doc['expo_data_version']}, updated {doc['updated']}",
            highlight=False,
        )
    else:
        console.print("[yellow]no run.json: the run has not finished (or this is not a run dir)[/]")
    paths = {"problems": run.problems, "problems_rejected": run.problems_rejected, "samples": run.samples}
    paths.update({name: run.table(name) for name in DATASETS})
    for name, path in paths.items():
        if not path.exists():
            console.print(f"\n[bold]{name}[/]: missing")
            continue
        try:
            table = read_table(path, name)
        except Exception as e:
            console.print(f"\n[bold]{name}[/]: [red]unreadable: {e}[/]")
            continue
        console.print(f"\n[bold]{name}[/]: {table.num_rows} rows, {len(TABLES[name].names)} columns")
        if name == "samples" and table.num_rows:
            counts: dict[tuple[str, str], int] = {}
            for k, v in zip(table.column("kind").to_pylist(), table.column("verdict").to_pylist(), strict=True):
                counts[(k, v)] = counts.get((k, v), 0) + 1
            console.print("  " + ", ".join(f"{k}/{v}: {n}" for (k, v), n in sorted(counts.items())))
        if table.num_rows == 0:
            continue
        # One small field/value table per row: readable at any terminal width, unlike 22 columns.
        shown = list(enumerate(table.slice(0, rows).to_pylist()))
        if name == "samples":  # a few of each kind: CoT rollouts and explanations side by side
            kinds = table.column("kind").to_pylist()
            picked = [
                i for kind in ("cot", "explanation") for i in [j for j, k in enumerate(kinds) if k == kind][:rows]
            ]
            shown = [(i, table.slice(i, 1).to_pylist()[0]) for i in picked]
        for i, r in shown:
            view = Table(title=f"{name} row {i}", show_header=False, title_justify="left")
            view.add_column("field", style="bold", no_wrap=True)
            view.add_column("value", overflow="fold")
            for col in table.column_names:
                view.add_row(col, _truncate(r[col], width))
            console.print(view)
    if doc and doc.get("summary"):
        console.print()
        print_summary(doc["summary"], doc.get("problems"))


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet with `gold` and `prediction` fields")],
    out: Annotated[Path | None, typer.Option(help="output file (default: NAME.verified.EXT next to the input)")] = None,
    gold_key: Annotated[str, typer.Option(help="field holding the gold answer")] = "gold",
    prediction_key: Annotated[str, typer.Option(help="field holding the model output")] = "prediction",
    workers: Annotated[int, typer.Option(help="verifier processes")] = 2,
    timeout: Annotated[float, typer.Option(help="hard deadline per answer, seconds")] = 5.0,
) -> None:
    """Label predictions against gold answers (last \\boxed{}, Math-Verify, hard deadlines)."""
    from pipeline.verify import verify_file

    if not file.exists():
        _fail(f"no such file: {file}")
    try:
        target, counts = verify_file(file, out, gold_key, prediction_key, workers=workers, timeout_s=timeout)
    except ValueError as e:
        _fail(str(e))
    total = sum(counts.values())
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    console.print(f"verified {total} rows ({summary}) -> {target}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run dir written by `expo-data run`")],
) -> None:
    """Rebuild report/ (markdown and plots) from the tables in a run dir."""
    from pipeline.report import write_report
    from pipeline.store import RunDir

    run = RunDir(run_dir)
    if not run.samples.is_dir():
        _fail(f"no samples in {run_dir}: not a run dir, or the run has not generated anything yet")
    try:
        write_report(run)
    except _user_errors() as e:
        _fail(str(e))
    console.print(f"report: {run.report / 'report.md'}")


class TrainKindArg(StrEnum):
    dpo = "dpo"
    sft = "sft"
    grpo = "grpo"


@app.command("train")
def train_cmd(
    kind: Annotated[TrainKindArg, typer.Argument(help="dpo (ExP-DPO), sft (ExP-SFT) or grpo (ExP-GRPO)")],
    data: Annotated[str | None, typer.Option(help="a run dir, or a Hugging Face Hub dataset repo id")] = None,
    model: Annotated[str | None, typer.Option(help="initial policy: a model folder or a Hub model id")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder; becomes a model folder the engines load")] = None,
    table: Annotated[
        str | None, typer.Option(help="dpo only: dpo (default), or the baselines dpo_expert / dpo_self")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="training config (YAML), e.g. data/train/quickstart.yaml")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set dpo.beta=0.2")] = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="retrain over a finished run in --out")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect logs")] = False,
) -> None:
    """Train with TRL on a dataset this tool wrote: offline ExP-DPO, ExP-SFT or ExP-GRPO."""
    _quiet_defaults(verbose)
    from pipeline.train.config import load_train_config

    errors = _user_errors()
    base = {"kind": kind.value, "data": data, "model": model, "output_dir": str(out) if out else None, "table": table}
    from pipeline.train.run import preflight

    try:
        cfg = load_train_config(config, set_ or [], base=base)
        preflight(cfg)
    except errors as e:
        _fail(str(e))
    console.print(
        f"[bold]expo-data train {cfg.kind}[/]: {cfg.data_table} from {cfg.data}, model {cfg.model} -> {cfg.output_dir}",
        highlight=False,
    )
    from flows.train import train_flow

    try:
        path = _with_progress(
            lambda: train_flow(
                kind.value,
                data,
                model,
                str(out) if out else None,
                str(config) if config else None,
                set_ or [],
                force_new,
            )
        )
    except errors as e:
        _fail(str(e))
    doc = json.loads((Path(path) / "train.json").read_text())
    console.print(
        f"{doc['global_step']} steps on {doc['rows']} rows, train loss {doc['train_loss']:.4f}, "
        f"{doc['seconds']:.1f}s ({doc['device']}, {doc['precision']})\ncheckpoint: [bold]{path}[/]",
        highlight=False,
    )


def _print_eval(result: dict[str, Any], title: str) -> None:
    ks = [f"pass@{k}" for k in result["ks"]]
    table = Table(title=title)
    for col in ("level", "problems", *ks):
        table.add_column(col, justify="right")
    rows = [(level, vals) for level, vals in result["by_level"].items()] + [("all", result["overall"])]
    for level, vals in rows:
        table.add_row(level, str(vals["problems"]), *(_fmt(vals[k]) for k in ks))
    console.print(table)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="a model folder (e.g. a training checkpoint) or a Hub model id")],
    problems: Annotated[str, typer.Option(help="problem file, folder or Hub dataset (as in a run config)")],
    engine: Annotated[str, typer.Option(help="vllm or hf")] = "vllm",
    samples: Annotated[int, typer.Option("--samples", "-n", help="samples per problem (n)")] = 4,
    k: Annotated[list[int] | None, typer.Option("--k", help="k of pass@k (k <= n); repeatable")] = None,
    temperature: Annotated[float, typer.Option()] = 0.7,
    max_tokens: Annotated[int, typer.Option()] = 1024,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    limit: Annotated[int | None, typer.Option(help="first N valid problems")] = None,
    split: Annotated[str | None, typer.Option(help="Hub dataset split")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    workers: Annotated[int, typer.Option(help="verifier processes")] = 2,
    out: Annotated[Path | None, typer.Option(help="also write the result (with per-problem counts) as JSON")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """pass@k (unbiased estimator) by level of a policy on a problem set, with our verifier."""
    _quiet_defaults(verbose)
    from pydantic import ValidationError

    from pipeline.config import ModelConfig, ProblemsConfig, _resolve_path
    from pipeline.evaluate import EvalSpec, evaluate
    from pipeline.verify import VerifierPool

    errors = _user_errors()
    try:
        spec = EvalSpec(
            samples=samples,
            ks=tuple(k or sorted({1, samples})),
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )
        model_cfg = ModelConfig(path=_resolve_path(model, Path.cwd()), engine=engine, max_model_len=max_model_len)
        problems_cfg = ProblemsConfig(source=_resolve_path(problems, Path.cwd()), limit=limit, split=split)
    except (ValueError, ValidationError) as e:
        _fail(str(e))
    try:
        with VerifierPool(workers=workers) as pool:
            result = _with_progress(lambda: evaluate(model_cfg, problems_cfg, spec, pool))
    except errors as e:
        _fail(str(e))
    _print_eval(result, f"{model} on {problems} (n={samples})")
    if out:
        from pipeline.store import write_json

        write_json(result, out)
        console.print(f"result: {out}")


@app.command("online")
def online_cmd(
    config: Annotated[Path, typer.Argument(help="online config (YAML), e.g. data/online-quickstart.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set rounds=3")] = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="discard an existing loop in output_dir")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Iterative ExP-DPO: rounds of generate -> dpo -> train, resumable at round granularity."""
    _quiet_defaults(verbose)
    from pipeline.online import load_online_config

    errors = _user_errors()
    try:
        cfg = load_online_config(config, set_ or [])
    except errors as e:
        _fail(str(e))
    console.print(f"[bold]expo-data online[/] {cfg.name}: {cfg.rounds} rounds -> {cfg.output_dir}", highlight=False)
    from flows.train import online_flow

    try:
        state = _with_progress(lambda: online_flow(str(config), set_ or [], force_new))
    except errors as e:
        _fail(str(e))
    rows = state["summary"]
    cols = list(dict.fromkeys(c for r in rows for c in r if c != "policy"))
    table = Table(title="held-out accuracy per round")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) if "pass@" in c else ("-" if r.get(c) is None else f"{r[c]:.4g}") for c in cols))
    console.print(table)
    console.print(f"final policy: [bold]{rows[-1]['policy']}[/]\nstate: {Path(cfg.output_dir) / 'online.json'}")


@app.command("build")
def build_cmd(
    source: Annotated[str, typer.Argument(help="a run dir, a published dataset folder, or a Hub dataset repo id")],
    out: Annotated[Path | None, typer.Option(help="run dir to write (default: rebuild SOURCE in place)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a build key: --set build.pairs_per_problem=2")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of SOURCE")] = None,
) -> None:
    """Cut the training sets (dpo, dpo_expert, dpo_self, grpo, sft) again from samples, with other
    build settings, from your run or from published samples."""
    from pipeline.build import build_settings, materialize, rebuild
    from pipeline.store import RunDir

    errors = _user_errors()
    is_run = (Path(source) / "run.json").exists() and (Path(source) / "samples").is_dir()
    if out is None and not is_run:
        _fail(f"{source} is not a run dir; pass --out DIR to build from published data")
    try:
        run = RunDir(source) if out is None else None
        cfg = build_settings(run.load_run_json() if run else None, set_ or [])
        if run is None:
            run = materialize(source, out, revision=revision)
        stats = rebuild(run, cfg)
    except errors as e:
        _fail(str(e))
    rows = ", ".join(f"{k} {v}" for k, v in stats["rows"].items())
    console.print(f"built {run.root}: {rows}", highlight=False)


@app.command("publish")
def publish_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run dir")],
    repo: Annotated[str, typer.Option(help="Hub dataset repo id, owner/name")],
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="repo visibility (default: as it is; new repos public)")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="branch to commit to (created if missing)")] = None,
    tag: Annotated[str | None, typer.Option(help="tag the release commit")] = None,
    license: Annotated[str | None, typer.Option(help="card license (default: the run config's, else 'other')")] = None,
    dry_run: Annotated[
        Path | None, typer.Option("--dry-run", help="write the release folder here and list the operations; no upload")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Publish a run's datasets to the Hugging Face Hub: one commit, one config per table, a card.

    The token comes from HF_TOKEN or `hf auth login`; it is never written anywhere."""
    _quiet_defaults(verbose)
    from pipeline.publish import PublishError
    from pipeline.store import RunDir

    doc = RunDir(run_dir).load_run_json()
    if doc is None:
        _fail(f"{run_dir} has no run.json: not a run dir")
    if license is None:
        license = ((doc.get("config") or {}).get("publish") or {}).get("license") or "other"
    from flows.publish import publish_flow

    try:
        result = publish_flow(str(run_dir), repo, private, revision, tag, license, str(dry_run) if dry_run else None)
    except (PublishError, *_user_errors()) as e:
        _fail(str(e))
    for op in result["operations"]:
        console.print(f"  {op}", highlight=False)
    if dry_run:
        console.print(f"dry run: {len(result['operations'])} operations; release folder [bold]{dry_run}[/]")
    else:
        console.print(f"published [bold]{repo}[/] ({', '.join(result['configs'])}): {result['commit_url']}")


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Argument(help="run config (YAML) to generate on schedule")],
    cron: Annotated[str, typer.Option(help='cron schedule, e.g. "0 2 * * *" (02:00 every night)')],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key on every run")] = None,
    name: Annotated[str | None, typer.Option(help="deployment name (default: the config's name)")] = None,
    timezone: Annotated[str, typer.Option(help="time zone of the cron schedule")] = "UTC",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the generate flow on a cron schedule from this process (Prefect's flow.serve): no work
    pool or worker needed. Stop with Ctrl-C. Add a `publish:` block to publish every run."""
    _quiet_defaults(verbose)
    from pipeline.config import load_config

    try:
        cfg = load_config(config, set_ or [])
    except _user_errors() as e:
        _fail(str(e))
    from prefect.schedules import Cron

    from flows.generate import generate_flow

    deployment = name or f"{cfg.name}-scheduled"
    console.print(
        f"serving [bold]expo-generate/{deployment}[/] on cron {cron!r} ({timezone}): {config} -> {cfg.output_dir}",
        highlight=False,
    )
    generate_flow.serve(
        name=deployment,
        schedule=Cron(cron, timezone=timezone),
        parameters={"config_path": str(config.resolve()), "overrides": set_ or [], "force_new": False},
    )


@tiny_app.command("build")
def tiny_build(
    out: Annotated[Path | None, typer.Option(help="output folder (default: data/tiny-model in the repo)")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: the recipe's)")] = None,
) -> None:
    """Rebuild the tiny model from scratch on this CPU (deterministic; a few minutes)."""
    from dataclasses import replace

    from pipeline.tiny import DEFAULT_TINY_MODEL_DIR, TinyRecipe, build_tiny_model

    recipe = TinyRecipe() if steps is None else replace(TinyRecipe(), steps=steps)
    info = build_tiny_model(out or DEFAULT_TINY_MODEL_DIR, recipe, log=lambda m: console.print(m, highlight=False))
    console.print(json.dumps(info["metrics"]))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
