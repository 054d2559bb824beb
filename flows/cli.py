"""The `expo-data` command line: argument parsing and printing; the work is in ``pipeline`` and the
flows, the drawing in ``flows.views``.

Every command runs behind one boundary (:class:`_App`): it sets up the process's logging
(``pipeline.logs``: credentials masked in every record; a user's mistake kept off the terminal
unless ``--verbose``), and turns an :class:`~pipeline.errors.ExpoDataError` into one printed message
and an exit status (2 for a mistake the user can fix, 1 for work that failed); only real bugs show
a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.server import ensure_api
from flows.views import console, err_console, error, with_progress


def _boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        from pipeline import logs
        from pipeline.errors import ExpoDataError
        from pipeline.secrets import redact

        logs.install(verbose=bool(kwargs.get("verbose", False)))
        try:
            return fn(*args, **kwargs)
        except ExpoDataError as e:
            error(redact(e.for_command_line()))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return command


class _App(typer.Typer):
    """A Typer app whose every command runs behind :func:`_boundary`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(_boundary(fn))


app = _App(
    add_completion=False, no_args_is_help=True, help="ExPO training data: generate, verify, inspect, train, evaluate."
)
tiny_app = _App(no_args_is_help=True, help="The tiny offline model used by tests and the quickstart.")
app.add_typer(tiny_app, name="tiny-model")

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a key: --set generation.rollouts=4")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect and engine logs")]


# Before Prefect/vLLM are imported: no telemetry, and a temporary local Prefect server (the one
# Prefect starts when none is configured) gets more than its default 20 s on a busy 2-core machine.
ALWAYS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
# Without --verbose, the chatter of Prefect, vLLM, torch, transformers and datasets stays out.
QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def _quiet_defaults(verbose: bool) -> None:
    for key, value in (ALWAYS if verbose else {**ALWAYS, **QUIET}).items():
        os.environ.setdefault(key, value)
    if not verbose:
        import logging
        import warnings

        logging.getLogger("torch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # TRL warns about any vLLM newer than it was tested with; its vLLM path is not ours.
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")


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
    set_: SetOption = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="retrain over a finished run in --out")] = False,
    verbose: Verbose = False,
) -> None:
    """Train with TRL on a dataset this tool wrote: offline ExP-DPO, ExP-SFT or ExP-GRPO."""
    _quiet_defaults(verbose)
    from pipeline.train.config import load_train_config
    from pipeline.train.run import preflight, read_manifest

    out_str = str(out) if out else None
    base = {"kind": kind.value, "data": data, "model": model, "output_dir": out_str, "table": table}
    cfg = load_train_config(config, set_ or [], base=base)
    preflight(cfg)
    console.print(
        f"[bold]expo-data train {cfg.kind}[/]: {cfg.data_table} from {cfg.data}, model {cfg.model} -> {cfg.output_dir}",
        highlight=False,
    )
    from flows.train import train_flow

    ensure_api()
    config_str = str(config) if config else None
    path = with_progress(lambda: train_flow(kind.value, data, model, out_str, config_str, set_ or [], force_new, table))
    doc = read_manifest(path) or {}
    console.print(
        f"{doc['global_step']} steps on {doc['rows']} rows, train loss {doc['train_loss']:.4f}, "
        f"{doc['seconds']:.1f}s ({doc['device']}, {doc['precision']})\ncheckpoint: [bold]{path}[/]",
        highlight=False,
    )


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
    system: Annotated[
        str | None,
        typer.Option(help="the system turn, as prompts.system: unset for the chat template's default, '' for none"),
    ] = None,
    workers: Annotated[int, typer.Option(help="verifier processes")] = 2,
    out: Annotated[Path | None, typer.Option(help="also write the result (with per-problem counts) as JSON")] = None,
    verbose: Verbose = False,
) -> None:
    """pass@k (unbiased estimator) by level of a policy on a problem set, with our verifier."""
    _quiet_defaults(verbose)
    from flows.views import print_eval
    from pipeline.evaluate import EvalSpec, eval_inputs, evaluate
    from pipeline.store import write_json
    from pipeline.verify import VerifierPool

    ks = tuple(k or sorted({1, samples}))
    spec = EvalSpec(samples=samples, ks=ks, temperature=temperature, max_tokens=max_tokens, seed=seed, system=system)
    model_cfg, problems_cfg = eval_inputs(model, problems, engine, max_model_len, limit, split)
    with VerifierPool(workers=workers) as pool:
        result = with_progress(lambda: evaluate(model_cfg, problems_cfg, spec, pool))
    print_eval(result, f"{model} on {problems} (n={samples})")
    if out:
        write_json(result, out)
        console.print(f"result: {out}")


@app.command("online")
def online_cmd(
    config: Annotated[Path, typer.Argument(help="online config (YAML), e.g. data/online-quickstart.yaml")],
    set_: SetOption = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="discard an existing loop in output_dir")] = False,
    verbose: Verbose = False,
) -> None:
    """Iterative ExP-DPO: rounds of generate -> dpo -> train, resumable at round granularity."""
    _quiet_defaults(verbose)
    from flows.views import print_rounds
    from pipeline.online import STATE, load_online_config

    cfg = load_online_config(config, set_ or [])
    console.print(f"[bold]expo-data online[/] {cfg.name}: {cfg.rounds} rounds -> {cfg.output_dir}", highlight=False)
    from flows.train import online_flow

    ensure_api()
    state = with_progress(lambda: online_flow(str(config), set_ or [], force_new))
    rows = state["summary"]
    print_rounds(rows)
    console.print(f"final policy: [bold]{rows[-1]['policy']}[/]\nstate: {Path(cfg.output_dir) / STATE}")


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


@tiny_app.command("build")
def tiny_build(
    out: Annotated[Path | None, typer.Option(help="output folder (default: data/tiny-model in the repo)")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: the recipe's)")] = None,
) -> None:
    """Rebuild the tiny model from scratch on this CPU (deterministic; a few minutes)."""
    import json
    from dataclasses import replace

    from pipeline.tiny import DEFAULT_TINY_MODEL_DIR, TinyRecipe, build_tiny_model

    recipe = TinyRecipe() if steps is None else replace(TinyRecipe(), steps=steps)
    info = build_tiny_model(out or DEFAULT_TINY_MODEL_DIR, recipe, log=lambda m: console.print(m, highlight=False))
    console.print(json.dumps(info["metrics"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
