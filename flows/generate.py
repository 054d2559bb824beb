"""The generate flow: orchestration only. Every step is a function of ``pipeline.generate``.

Tasks are coarse (problems, one per shard, summary) and exchange paths and small dicts, never
tables. Parameters are plain strings and lists so the flow runs the same from the CLI, a deployment
or the Prefect UI.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import build
from pipeline import generate as gen
from pipeline import report as rep
from pipeline.config import RunConfig, load_config
from pipeline.engines import get_engine
from pipeline.store import RunDir
from pipeline.verify import VerifierPool


@task(name="load-problems", cache_policy=NO_CACHE)
def load_problems_task(cfg: RunConfig, run: RunDir, pool: VerifierPool) -> dict[str, Any]:
    summary = gen.write_problems(cfg, run, pool)
    get_run_logger().info(
        "problems: %d valid, %d rejected %s, %d filtered out",
        summary["valid"],
        summary["rejected"],
        summary["rejected_by_reason"],
        summary["filtered_out"],
    )
    return summary


@task(name="generate-shard", cache_policy=NO_CACHE, task_run_name="shard-{plan.index}")
def shard_task(cfg: RunConfig, run: RunDir, plan: gen.ShardPlan, pool: VerifierPool) -> dict[str, Any]:
    engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed)
    stats = gen.run_shard(cfg, run, plan, engine, pool)
    if stats.get("skipped"):
        get_run_logger().info("shard %d already complete, skipped", plan.index)
    else:
        get_run_logger().info(
            "shard %d: %d rows (generate %.1fs, verify %.1fs)",
            plan.index,
            stats["rows"],
            stats["generate_s"],
            stats["verify_s"],
        )
    return stats


@task(name="build-datasets", cache_policy=NO_CACHE)
def build_task(cfg: RunConfig, run: RunDir) -> dict[str, Any]:
    build.finalize_problems(run)
    stats = build.build_datasets(run, cfg.build)
    get_run_logger().info("datasets: %s", stats["rows"])
    return stats


@task(name="summarize", cache_policy=NO_CACHE)
def summarize_task(
    cfg: RunConfig,
    run: RunDir,
    problems_summary: dict[str, Any],
    shard_stats: list[dict[str, Any]],
    build_stats: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    summary = rep.summarize_run(run)
    engine_info = gen.engine_description(
        run, shard_stats, lambda: get_engine(cfg.model, seed=cfg.generation.sampling.seed)
    )
    gen.write_run_json(cfg, run, engine_info, problems_summary, shard_stats, summary, build_stats, timings)
    create_table_artifact(
        key=f"expo-summary-{_artifact_key(cfg.name)}",
        table=rep.summary_table_rows(summary),
        description=f"ExPO generation `{cfg.name}`: accuracy by level, CoT vs self-explanation",
    )
    return summary


@task(name="report", cache_policy=NO_CACHE)
def report_task(cfg: RunConfig, run: RunDir) -> str:
    markdown = rep.write_report(run)
    create_markdown_artifact(
        key=f"expo-report-{_artifact_key(cfg.name)}",
        markdown=markdown,
        description=f"ExPO run report `{cfg.name}` (plots in {run.report})",
    )
    return str(run.report)


def _artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


@flow(name="expo-generate", log_prints=True)
def generate_flow(config_path: str, overrides: list[str] | None = None, force_new: bool = False) -> str:
    """Generate rollouts, self-explanations and verdicts for a config; returns the run dir."""
    t0 = time.monotonic()
    cfg = load_config(config_path, overrides or [])
    run = gen.prepare_run_dir(cfg, force=force_new)
    with VerifierPool(workers=cfg.verifier.workers, timeout_s=cfg.verifier.timeout_s) as pool:
        problems_summary = load_problems_task(cfg, run, pool)
        t_problems = time.monotonic()
        plans = gen.plan_shards(cfg, run)
        shard_stats = [shard_task(cfg, run, plan, pool) for plan in plans]
        t_shards = time.monotonic()
        build_stats = build_task(cfg, run)
        t_build = time.monotonic()
        timings = {
            "problems_s": round(t_problems - t0, 3),
            "shards_s": round(t_shards - t_problems, 3),
            "build_s": round(t_build - t_shards, 3),
        }
        timings["total_s"] = round(time.monotonic() - t0, 3)
        summarize_task(cfg, run, problems_summary, shard_stats, build_stats, timings)
        report_task(cfg, run)
    if cfg.publish is not None:
        from flows.publish import publish_task

        p = cfg.publish
        publish_task(str(run.root), p.repo, p.private, p.revision, p.tag, p.license)
    return str(run.root)
