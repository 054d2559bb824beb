"""The generate flow: orchestration only. The steps are ``pipeline`` functions; where shard stages
run is ``flows.executors``.

Tasks are coarse (problems, an engine stage and a verifier stage per shard, build, summary,
report) and exchange paths and small records, never tables. The deployable flow takes plain
strings (a config path and ``--set``-style overrides) so it runs the same from the CLI, a
deployment or the Prefect UI; Python callers that hold a :class:`RunConfig` (the online loop) use
:func:`generate_config_flow` and never turn typed values back into strings.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.executors import run_shards
from pipeline import build, manifest, problem_table, report, stages, summary
from pipeline.config import RunConfig, load_config
from pipeline.engines import get_engine
from pipeline.problem_table import finalize_problems
from pipeline.store import RunDir
from pipeline.timeline import Laps, stage_timeline
from pipeline.verify import VerifierPool, close_shared_pools, shared_pool
from schemas.run_doc import BuildStats, ProblemsSummary, RunSummary, Timings


@task(name="load-problems", cache_policy=NO_CACHE)
def load_problems_task(cfg: RunConfig, run: RunDir, pool: VerifierPool) -> ProblemsSummary:
    s = problem_table.write_problems(cfg, run, pool)
    get_run_logger().info(
        "problems: %d valid, %d rejected %s, %d filtered out", s.valid, s.rejected, s.rejected_by_reason, s.filtered_out
    )
    return s


@task(name="build-datasets", cache_policy=NO_CACHE)
def build_task(cfg: RunConfig, run: RunDir) -> BuildStats:
    finalize_problems(run)
    stats = build.build_datasets(run, cfg.build)
    get_run_logger().info("datasets: %s", stats.rows)
    return stats


@task(name="summarize", cache_policy=NO_CACHE)
def summarize_task(cfg: RunConfig, run: RunDir, results: manifest.RunResults) -> RunSummary:
    manifest.finish_run(cfg, run, results)
    create_table_artifact(
        key=f"expo-summary-{artifact_key(cfg.name)}",
        table=summary.summary_table_rows(results.summary),
        description=f"ExPO generation `{cfg.name}`: accuracy by level, CoT vs self-explanation",
    )
    return results.summary


@task(name="report", cache_policy=NO_CACHE)
def report_task(cfg: RunConfig, run: RunDir) -> str:
    markdown = report.write_report(run)
    create_markdown_artifact(
        key=f"expo-report-{artifact_key(cfg.name)}",
        markdown=markdown,
        description=f"ExPO run report `{cfg.name}` (plots in {run.report})",
    )
    return str(run.report)


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


def run_generation(cfg: RunConfig, force_new: bool = False) -> str:
    """The whole generation of one run, inside a flow: problems, shards, build, run.json, report,
    and a publish when the config asks for one. Returns the run dir."""
    laps = Laps()
    run = manifest.start_run(cfg, force=force_new)  # checks the model before the run dir is touched
    get_run_logger().info("run %s: %s -> %s", cfg.name, cfg.problems.source, run.root)
    for warning in run.read_doc().prompts.warnings:
        get_run_logger().warning("prompts: %s", warning)
    try:
        v = cfg.verifier
        problems = load_problems_task(cfg, run, shared_pool(v.workers, v.timeout_s, v.extraction))
        laps.mark("problems")
        outcomes = run_shards(cfg, run, stages.plan_shards(cfg, run))
        laps.mark("shards")
        built = build_task(cfg, run)
        laps.mark("build")
        timings = Timings(
            **laps.laps,
            executor=cfg.executor,
            shard_stages=stage_timeline(o.record for o in outcomes if o.record),
            total_s=laps.total(),
        )
        engine = manifest.engine_description(run, outcomes, lambda: get_engine(cfg.model, cfg.generation.sampling.seed))
        results = manifest.RunResults(problems, outcomes, summary.summarize_run(run), built, timings, engine)
        summarize_task(cfg, run, results)
        report_task(cfg, run)
    finally:
        close_shared_pools()
    if cfg.publish is not None:
        from flows.publish import publish_flow

        p = cfg.publish
        publish_flow(str(run.root), p.repo, p.private, p.revision, p.tag, p.license, p.dry_run)
    return str(run.root)


@flow(name="expo-generate")
def generate_flow(config_path: str, overrides: list[str] | None = None, force_new: bool = False) -> str:
    """Generate rollouts, self-explanations and verdicts for a config file; returns the run dir."""
    return run_generation(load_config(config_path, overrides or []), force_new)


@flow(name="expo-generate")
def generate_config_flow(config: RunConfig, force_new: bool = False) -> str:
    """The same flow for a config held in Python (as the online loop holds each round's)."""
    return run_generation(config, force_new)
