"""The experiment flow (`expo-experiment`): orchestration only, the work is in ``pipeline.experiment``.

The generation is the generate flow (a subflow), each training run the train task, the online arm the
online loop with the same steps as `expo-online-dpo`; one verifier pool serves every evaluation.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.generate import artifact_key, generate_config_flow
from flows.train import train_task
from pipeline.engines import release_engines
from pipeline.evaluate import EvalSpec
from pipeline.experiment.config import load_experiment_config, run_config
from pipeline.experiment.run import Experiment, evaluate_policy
from pipeline.experiment.summary import format_table, plot_curves, table_rows
from pipeline.online import OnlineLoop


@task(name="evaluate-checkpoint", cache_policy=NO_CACHE)
def eval_checkpoint_task(cfg: Any, run: Any, path: str, spec: EvalSpec, pool: Any) -> dict[str, Any]:
    result = evaluate_policy(cfg, run, path, spec, pool)
    get_run_logger().info("eval %s (seed %s): %s", path, spec.seed, result["overall"])
    return result


def _rounds_are_evaluated_by_the_experiment(policy: str, path: str) -> dict[str, Any]:
    raise AssertionError("the online arm's loop has no eval section: the experiment evaluates each round")


@flow(name="expo-experiment")
def experiment_flow(config_path: str, overrides: list[str] | None = None, force_new: bool = False) -> dict[str, Any]:
    """Generate -> build -> train every arm -> held-out pass@k per arm, with seeds, curves and a plot."""
    from pathlib import Path

    from pipeline.verify import VerifierPool

    cfg = load_experiment_config(config_path, overrides or [])
    logger = get_run_logger()

    def online(ocfg: Any) -> dict[str, Any]:
        loop = OnlineLoop(
            ocfg,
            generate=generate_config_flow,
            train=lambda tcfg: train_task(tcfg),
            evaluate=_rounds_are_evaluated_by_the_experiment,
            release=release_engines,
            log=logger.info,
        )
        return loop.run()

    v = run_config(cfg).verifier  # the generation run's verifier settings judge every evaluation too
    with VerifierPool(workers=v.workers, timeout_s=v.timeout_s, extraction=v.extraction) as pool:
        exp = Experiment(
            cfg,
            generate=generate_config_flow,
            train=lambda tcfg, **rows: train_task(tcfg, **rows),
            evaluate=lambda path, spec: eval_checkpoint_task(cfg, exp.run, path, spec, pool),
            online=online,
            release=release_engines,
            log=logger.info,
        )
        state = exp.execute(force_new=force_new)
    plot_curves(state, Path(cfg.output_dir) / "curves.png")
    create_markdown_artifact(
        key=f"expo-experiment-{artifact_key(cfg.name)}",
        markdown=format_table(table_rows(state)),
        description=f"Experiment `{cfg.name}`: held-out pass@k per arm",
    )
    return state
