"""The `expo-data` command line: argument parsing and printing; the work is in ``pipeline`` and the
flows, the drawing in ``flows.views``. The shared boundary is in ``flows.cli_app``; the training and
evaluation commands (train, eval, online, experiment) in ``flows.cli_train``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

import flows.cli_train  # noqa: F401  (registers the training commands on the app)
from flows.cli_app import SetOption, Verbose, _quiet_defaults, app, tiny_app
from flows.server import ensure_api
from flows.views import console, with_progress


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML), e.g. data/quickstart.yaml")],
    set_: SetOption = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="discard an existing run in output_dir")] = False,
    verbose: Verbose = False,
) -> None:
    """Generate CoT rollouts, self-explanations and verdicts; write the run dir."""
    _quiet_defaults(verbose)
    from flows.views import print_run_end
    from pipeline.config import load_config
    from pipeline.manifest import preflight
    from pipeline.store import RunDir

    cfg = load_config(config, set_ or [])
    preflight(cfg, force_new)  # what the flow checks first, before a Prefect server starts for nothing
    console.print(
        f"[bold]expo-data run[/] {cfg.name}: model {cfg.model.path} ({cfg.model.engine}), "
        f"problems {cfg.problems.source}, G={cfg.generation.rollouts}, "
        f"explanations={cfg.generation.explanations} -> {cfg.output_dir}",
        highlight=False,
    )
    from flows.generate import generate_flow

    ensure_api()
    run_dir = with_progress(lambda: generate_flow(str(config), overrides=set_ or [], force_new=force_new))
    print_run_end(run_dir, RunDir(run_dir).require_doc())


@app.command()
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="a run dir written by `expo-data run`")],
    rows: Annotated[int, typer.Option(help="rows to show per table")] = 3,
    width: Annotated[int, typer.Option(help="characters per value")] = 200,
) -> None:
    """Counts and a few rows of every table in a run dir."""
    from flows.views import print_inspection
    from pipeline.errors import RunDirError
    from pipeline.inspection import peek_run, render_prompts
    from pipeline.store import RunDir

    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunDirError(f"no such run dir: {run_dir}")
    doc, peeks = run.read_doc(), peek_run(run, rows)
    print_inspection(doc, peeks, width, render_prompts(doc, peeks))


class ExtractionArg(StrEnum):
    boxed = "boxed"
    boxed_or_final = "boxed_or_final"


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet with `gold` and `prediction` fields")],
    out: Annotated[Path | None, typer.Option(help="output file (default: NAME.verified.EXT next to the input)")] = None,
    gold_key: Annotated[str, typer.Option(help="field holding the gold answer")] = "gold",
    prediction_key: Annotated[str, typer.Option(help="field holding the model output")] = "prediction",
    workers: Annotated[int, typer.Option(help="verifier processes")] = 2,
    timeout: Annotated[float, typer.Option(help="hard deadline per answer, seconds")] = 5.0,
    extraction: Annotated[
        ExtractionArg, typer.Option(help="boxed: boxes only; boxed_or_final: also a stated final answer")
    ] = ExtractionArg.boxed_or_final,
) -> None:
    """Label predictions against gold answers (the final box group, Math-Verify, hard deadlines)."""
    from pipeline.errors import InputFileError
    from pipeline.verify_file import verify_file

    if not file.exists():
        raise InputFileError(f"no such file: {file}")
    target, counts = verify_file(
        file, out, gold_key, prediction_key, workers=workers, timeout_s=timeout, extraction=extraction.value
    )
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    console.print(f"verified {sum(counts.values())} rows ({summary}) -> {target}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run dir written by `expo-data run`")]) -> None:
    """Rebuild report/ (markdown and plots) from the tables in a run dir."""
    from pipeline.errors import RunDirError
    from pipeline.report import write_report
    from pipeline.store import RunDir

    run = RunDir(run_dir)
    if not run.samples.is_dir():
        raise RunDirError(f"no samples in {run_dir}: not a run dir, or the run has not generated anything yet")
    write_report(run)
    console.print(f"report: {run.report / 'report.md'}")


@app.command()
def decontaminate(
    source: Annotated[str, typer.Argument(help="problems to check: a file, a folder, or SOURCE[:SUBSET,...][@SPLIT]")],
    against: Annotated[
        list[str],
        typer.Option(help="a benchmark, as SOURCE (e.g. HuggingFaceH4/MATH-500@test, openai/gsm8k:main@test)"),
    ],
    ngram: Annotated[int, typer.Option(help="word n-gram size; 0 compares whole questions")] = 8,
    out: Annotated[Path | None, typer.Option(help="write every overlapping row here (JSONL)")] = None,
) -> None:
    """Check a problem set against benchmarks (the check `problems.decontaminate` applies in a run).
    Exits 1 when a row overlaps."""
    import json

    from flows.views import print_decontamination
    from pipeline.contamination import check_source, parse_source

    check = check_source(parse_source(source), [parse_source(a) for a in against], ngram or None)
    print_decontamination(check)
    if out is not None:
        lines = [json.dumps(f.to_dict()) for f in check.findings]
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        console.print(f"wrote {len(lines)} rows to {out}")
    if check.findings:
        raise typer.Exit(1)


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
    from pipeline.rebuild import rebuild_source

    run, stats = rebuild_source(source, out, set_ or [], revision=revision)
    rows = ", ".join(f"{k} {v}" for k, v in stats.rows.items())
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
    verbose: Verbose = False,
) -> None:
    """Publish a run's datasets to the Hugging Face Hub: one commit, one config per table, a card.

    The token comes from HF_TOKEN or `hf auth login`; it is never written anywhere."""
    _quiet_defaults(verbose)
    from pipeline.store import RunDir

    RunDir(run_dir).require_doc()
    from flows.publish import publish_flow

    ensure_api()
    result = publish_flow(str(run_dir), repo, private, revision, tag, license, str(dry_run) if dry_run else None)
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
    verbose: Verbose = False,
) -> None:
    """Run the generate flow on a cron schedule from this process (Prefect's flow.serve): no work
    pool or worker needed, but a Prefect server (PREFECT_API_URL), whose scheduler creates the runs.
    One run at a time: a run due while the previous one works waits for it. Stop with Ctrl-C (the
    schedule is paused). Add a `publish:` block to publish every run."""
    _quiet_defaults(verbose)
    from flows.server import require_server
    from pipeline.config import load_config

    cfg = load_config(config, set_ or [])
    api = require_server("expo-data serve")
    from prefect.schedules import Cron

    from flows.generate import generate_flow

    deployment = name or f"{cfg.name}-scheduled"
    console.print(
        f"serving [bold]expo-generate/{deployment}[/] on cron {cron!r} ({timezone}): {config} -> {cfg.output_dir}\n"
        f"server {api}; its runs: prefect flow-run ls --flow-name expo-generate",
        highlight=False,
    )
    generate_flow.serve(
        name=deployment,
        schedule=Cron(cron, timezone=timezone),
        parameters={"config_path": str(config.resolve()), "overrides": set_ or [], "force_new": False},
        limit=1,  # two runs writing one output_dir would interleave their shards
    )


class RecipeArg(StrEnum):
    tiny = "tiny"
    testbed = "testbed"


@tiny_app.command("build")
def tiny_build(
    out: Annotated[Path | None, typer.Option(help="output folder (default: the recipe's folder in data/)")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: the recipe's)")] = None,
    recipe: Annotated[
        RecipeArg,
        typer.Option(
            help="tiny: the quickstart's model; testbed: the experiment's, and its problem files in problems/ beside the model folder"
        ),
    ] = RecipeArg.tiny,
) -> None:
    """Rebuild the tiny model from scratch on this CPU (deterministic; a few minutes)."""
    import json
    from dataclasses import replace

    from pipeline.tiny import DEFAULT_TINY_MODEL_DIR, TinyRecipe, build_tiny_model
    from pipeline.tiny.testbed import DEFAULT_TESTBED_MODEL_DIR, TestbedRecipe, write_problem_files

    chosen = TinyRecipe() if recipe == RecipeArg.tiny else TestbedRecipe()
    chosen = chosen if steps is None else replace(chosen, steps=steps)
    default_dir = DEFAULT_TINY_MODEL_DIR if recipe == RecipeArg.tiny else DEFAULT_TESTBED_MODEL_DIR
    info = build_tiny_model(out or default_dir, chosen, log=lambda m: console.print(m, highlight=False))
    console.print(json.dumps(info["metrics"]))
    if recipe == RecipeArg.testbed:
        for path in write_problem_files((out or default_dir).parent / "problems"):
            console.print(f"wrote {path}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
