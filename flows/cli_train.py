"""The training and evaluation commands: train, eval, online, experiment."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_app import SetOption, Verbose, _quiet_defaults, app
from flows.server import ensure_api
from flows.views import console, with_progress


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
        str | None,
        typer.Option(
            help="dpo: dpo (default) or the baselines dpo_expert / dpo_self; grpo: grpo (default) or grpo_questa"
        ),
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


@app.command("experiment")
def experiment_cmd(
    config: Annotated[Path, typer.Argument(help="experiment config (YAML), e.g. data/experiment.yaml")],
    set_: SetOption = None,
    force_new: Annotated[
        bool, typer.Option("--force-new", help="discard an existing experiment in output_dir")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Generate, build, train every arm from the same model, and compare them on held-out problems."""
    _quiet_defaults(verbose)
    from pipeline.experiment.config import load_experiment_config
    from pipeline.experiment.run import STATE
    from pipeline.experiment.summary import format_table, table_rows

    cfg = load_experiment_config(config, set_ or [])
    console.print(
        f"[bold]expo-data experiment[/] {cfg.name}: arms {', '.join(cfg.arms)}; seeds {cfg.seeds}; "
        f"{cfg.train['max_steps']} steps each -> {cfg.output_dir}",
        highlight=False,
    )
    from flows.experiment import experiment_flow

    ensure_api()
    state = with_progress(lambda: experiment_flow(str(config), set_ or [], force_new))
    gen = state["generation"]
    console.print(
        f"initial model on the training problems: CoT {gen['cot_accuracy']:.1%} correct, "
        f"self-explanations {gen['explanation_accuracy']:.1%}; held-out problems: {state['heldout_problems'] or 'not checked (eval.allow_overlap)'}",
        highlight=False,
    )
    console.print(format_table(table_rows(state)), highlight=False, markup=False, soft_wrap=True)
    if state.get("expert_vs_explanation_nll"):
        console.print(f"expert solutions' NLL / self-explanations': {state['expert_vs_explanation_nll']:.2f}x")
    out = Path(cfg.output_dir)
    console.print(f"{state['seconds']:.0f}s; results: {out / STATE}, plot: {out / 'curves.png'}", highlight=False)
