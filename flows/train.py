"""Training flows: one TRL run (`expo-train`), and the iterative ExP-DPO loop (`expo-online-dpo`).

Orchestration only: the work is in ``pipeline.train`` and ``pipeline.online``. Parameters are plain
strings and lists, so the flows run the same from the CLI, a deployment or the Prefect UI.

No flow turns on Prefect's ``log_prints``: our code logs, and what libraries print would land in
the run's logs (dill, under datasets' ``map`` in TRL, disassembles functions through ``print``:
hundreds of lines of bytecode per training run).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.generate import artifact_key, generate_config_flow
from pipeline.engines import release_engines
from pipeline.online import OnlineConfig, OnlineLoop, evaluate_policy, load_online_config
from pipeline.train.config import TrainConfig, load_train_config
from pipeline.train.run import train


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    cfg: TrainConfig,
    force_new: bool = False,
    rows: Any = None,
    rows_doc: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """One training run (``rows``: a table derived in memory, see ``pipeline.train.run.train``)."""
    logger = get_run_logger()
    return train(cfg, force=force_new, log=logger.info, rows=rows, rows_doc=rows_doc, callbacks=callbacks)


@task(name="evaluate", cache_policy=NO_CACHE)
def eval_task(cfg: OnlineConfig, policy: str) -> dict[str, Any]:
    result = evaluate_policy(cfg, policy)
    get_run_logger().info("eval %s: %s", policy, result["overall"])
    return result


@flow(name="expo-train")
def train_flow(
    kind: str,
    data: str | None = None,
    model: str | None = None,
    out: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    force_new: bool = False,
    table: str | None = None,
) -> str:
    """Train ``kind`` (dpo | sft | grpo) on a run dir or Hub dataset; returns the checkpoint folder.

    ``data``, ``model``, ``out`` and ``table`` override the config file's keys of the same meaning."""
    base = {"kind": kind, "data": data, "model": model, "output_dir": out, "table": table}
    cfg = load_train_config(config_path, overrides or [], base=base)
    manifest = train_task(cfg, force_new)
    create_table_artifact(
        key=f"expo-train-{artifact_key(kind)}",
        table=[
            {
                "kind": kind,
                "table": cfg.data_table,
                "rows": manifest["rows"],
                "steps": manifest["global_step"],
                "train_loss": round(manifest["train_loss"], 6),
                "seconds": manifest["seconds"],
            }
        ],
        description=f"ExPO training run -> {cfg.output_dir}",
    )
    return cfg.output_dir


@flow(name="expo-online-dpo")
def online_flow(config_path: str, overrides: list[str] | None = None, force_new: bool = False) -> dict[str, Any]:
    """Rounds of generate -> build dpo -> train DPO -> next policy, with held-out accuracy per round."""
    cfg = load_online_config(config_path, overrides or [])
    logger = get_run_logger()
    loop = OnlineLoop(
        cfg,
        generate=generate_config_flow,
        train=lambda tcfg: train_task(tcfg),
        evaluate=lambda policy, _path: eval_task(cfg, policy),
        release=release_engines,
        log=logger.info,
    )
    state = loop.run(force_new=force_new)
    create_table_artifact(
        key=f"expo-online-{artifact_key(cfg.name)}",
        table=state["summary"],
        description=f"Online ExP-DPO `{cfg.name}`: held-out accuracy of each round's policy",
    )
    return state
