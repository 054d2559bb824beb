"""The generate flow: orchestration only. Every step is a function of ``pipeline.generate``.

Tasks are coarse (problems, one per shard, summary) and exchange paths and small dicts, never
tables. Parameters are plain strings and lists so the flow runs the same from the CLI, a deployment
or the Prefect UI.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy

from pipeline import __version__, build, progress
from pipeline import generate as gen
from pipeline import report as rep
from pipeline.config import RunConfig, load_config
from pipeline.engines import get_engine, release_engines
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


def _shard_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's cache key of a shard task: our shard key (problems' text, output config, model
    files, template), the run dir and the code version, and only once the shard's file on disk is
    complete. So a
    Prefect cache hit can never claim a shard our done-marker does not, and a rerun or a retry from
    the UI agrees with a rerun from the command line."""
    plan, run = parameters["plan"], parameters["run"]
    if not run.shard_done(plan.index, plan.key):
        return None
    run_id = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()[:12]
    return f"expo-shard-{plan.key}-{run_id}-{__version__}"


SHARD_CACHE = CachePolicy.from_cache_key_fn(_shard_cache_key)


@task(name="generate-shard", cache_policy=SHARD_CACHE, persist_result=True, task_run_name="shard-{plan.index}")
def shard_task(cfg: RunConfig, run: RunDir, plan: gen.ShardPlan, pool: VerifierPool) -> dict[str, Any]:
    engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed)
    try:
        stats = gen.run_shard(cfg, run, plan, engine, pool)
    except Exception:
        # A crashed engine is not reused: the retry (or the next shard) loads a fresh one.
        release_engines()
        raise
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
        retrying = shard_task.with_options(retries=cfg.retries.shards, retry_delay_seconds=cfg.retries.delay_s)
        shard_stats = []
        for plan in plans:
            try:
                shard_stats.append(retrying(cfg, run, plan, pool))
                progress.emit("shard.finished", index=plan.index)
            except Exception as e:
                raise gen.ShardFailedError(
                    f"shard {plan.index} (problems {plan.start}..{plan.stop - 1}) failed after "
                    f"{cfg.retries.shards + 1} tries: {type(e).__name__}: {e}. Finished shards are kept; "
                    "rerun the same command to resume."
                ) from e
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
