"""The generate flow: orchestration only. The steps are ``pipeline`` functions; where shard stages
run is ``flows.executors``.

Tasks are coarse (problems, a batch of shards each with its engine and verifier stages, build,
summary, report) and exchange paths and small records, never tables. The deployable flow takes plain
strings (a config path and ``--set``-style overrides) so it runs the same from the CLI, a
deployment or the Prefect UI; Python callers that hold a :class:`RunConfig` (the online loop) use
:func:`generate_config_flow` and never turn typed values back into strings.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.executors import run_shards
from pipeline import build, manifest, problem_table, report, rerun, stages, summary
from pipeline.config import RunConfig, load_config
from pipeline.engines import get_engine
from pipeline.problem_table import finalize_problems
from pipeline.store import RunDir
from pipeline.timeline import Laps, stage_timeline
from pipeline.verify import VerifierPool, close_shared_pools, shared_pool
from schemas.run_doc import BuildStats, ProblemsSummary, RunDoc, RunSummary, Timings


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
    _summary_artifact(cfg, results.summary)
    return results.summary


@task(name="report", cache_policy=NO_CACHE)
def report_task(cfg: RunConfig, run: RunDir) -> str:
    _report_artifact(cfg, run, report.write_report(run))
    return str(run.report)


@task(name="outputs-unchanged", cache_policy=NO_CACHE)
def unchanged_task(
    cfg: RunConfig,
    run: RunDir,
    previous: RunDoc,
    problems: ProblemsSummary,
    outcomes: list[manifest.ShardOutcome],
    laps: Laps,
) -> None:
    """Every shard was done and the outputs were made from them: run.json records this invocation,
    the artifacts are published again from what is on disk, nothing is rebuilt."""
    timings = Timings(**laps.laps, executor=cfg.executor, total_s=laps.total())
    doc = rerun.finish_unchanged(run, previous, problems, outcomes, timings)
    get_run_logger().info("outputs unchanged: every shard was done; the tables, summary and report are current")
    if doc.summary is not None:
        _summary_artifact(cfg, doc.summary)
    _report_artifact(cfg, run, (run.report / "report.md").read_text(encoding="utf-8"))


def _summary_artifact(cfg: RunConfig, run_summary: RunSummary) -> None:
    create_table_artifact(
        key=f"expo-summary-{artifact_key(cfg.name)}",
        table=summary.summary_table_rows(run_summary),
        description=f"ExPO generation `{cfg.name}`: accuracy by level, CoT vs self-explanation",
    )


def _report_artifact(cfg: RunConfig, run: RunDir, markdown: str) -> None:
    create_markdown_artifact(
        key=f"expo-report-{artifact_key(cfg.name)}",
        markdown=markdown,
        description=f"ExPO run report `{cfg.name}` (plots in {run.report})",
    )


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


def run_generation(cfg: RunConfig, force_new: bool = False) -> str:
    """The whole generation of one run, inside a flow: problems, shards, build, run.json, report,
    and a publish when the config asks for one. Returns the run dir."""
    laps = Laps()
    previous = None if force_new else RunDir(cfg.output_dir).read_doc()
    run = manifest.start_run(cfg, force=force_new)  # checks the model before the run dir is touched
    get_run_logger().info("run %s: %s -> %s", cfg.name, cfg.problems.source, run.root)
    for warning in run.read_doc().prompts.warnings:
        get_run_logger().warning("prompts: %s", warning)
    try:
        v = cfg.verifier
        problems = load_problems_task(cfg, run, shared_pool(v.workers, v.timeout_s, v.extraction))
        laps.mark("problems")
        plans = stages.plan_shards(cfg, run)
        outcomes = run_shards(cfg, run, plans)
        laps.mark("shards")
        if rerun.unchanged(run, previous, rerun.outputs_key(cfg, run, plans), outcomes):
            unchanged_task(cfg, run, previous, problems, outcomes, laps)
        else:
            built = build_task(cfg, run)
            laps.mark("build")
            timings = Timings(
                **laps.laps,
                executor=cfg.executor,
                shard_stages=stage_timeline(o.record for o in outcomes if o.record),
                total_s=laps.total(),
            )
            engine = manifest.engine_description(
                run, outcomes, lambda: get_engine(cfg.model, cfg.generation.sampling.seed)
            )
            key = rerun.outputs_key(cfg, run, plans)  # after the build, which adds the expert scores to problems
            results = manifest.RunResults(problems, outcomes, summary.summarize_run(run), built, timings, engine, key)
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
