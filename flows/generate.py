"""The generate flow: orchestration only. Every step is a function of ``pipeline.generate``.

Tasks are coarse (problems, one per shard, summary) and exchange paths and small dicts, never
tables. Parameters are plain strings and lists so the flow runs the same from the CLI, a deployment
or the Prefect UI.
"""

from __future__ import annotations

import contextlib
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
from pipeline.verify import VerifierPool, close_shared_pools, shared_pool


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


@task(name="generate-shard", cache_policy=NO_CACHE, task_run_name="generate-{plan.index}")
def generate_shard_task(cfg: RunConfig, run: RunDir, plan: gen.ShardPlan) -> dict[str, Any]:
    """The engine stage of a shard, on this process's (or this Ray worker's) long-lived engine."""
    engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed) if gen.needs_engine(run, plan) else None
    try:
        return gen.generate_shard(cfg, run, plan, engine)
    except Exception:
        # A crashed engine is not reused: the retry (or the next shard) loads a fresh one.
        release_engines()
        raise


@task(name="verify-shard", cache_policy=SHARD_CACHE, persist_result=True, task_run_name="verify-{plan.index}")
def verify_shard_task(
    cfg: RunConfig, run: RunDir, plan: gen.ShardPlan, generated: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The verifier stage of a shard. ``generated`` (the engine stage's stats, or its future) only
    orders this task after the engine stage; the stats themselves are read from the pending file."""
    pool = shared_pool(cfg.verifier.workers, cfg.verifier.timeout_s)
    stats = gen.finish_shard(cfg, run, plan, pool)
    if not stats.get("skipped"):
        get_run_logger().info(
            "shard %d: %d rows (generate %.1fs, score %.1fs, verify %.1fs)",
            plan.index,
            stats["rows"],
            stats["generate_s"],
            stats["score_s"],
            stats["verify_s"],
        )
    return stats


def _shard_failed(cfg: RunConfig, plan: gen.ShardPlan, e: BaseException) -> gen.ShardFailedError:
    return gen.ShardFailedError(
        f"shard {plan.index} (problems {plan.start}..{plan.stop - 1}) failed after "
        f"{cfg.retries.shards + 1} tries: {type(e).__name__}: {e}. Finished shards are kept; "
        "rerun the same command to resume."
    )


def _with_retries(cfg: RunConfig, t: Any) -> Any:
    return t.with_options(retries=cfg.retries.shards, retry_delay_seconds=cfg.retries.delay_s)


# Verifier stages allowed to wait behind the engine before it pauses: enough to keep the engine
# busy, few enough that a slow verifier does not let pending shards pile up.
MAX_PENDING_VERIFICATIONS = 2


def run_shards_local(cfg: RunConfig, run: RunDir, plans: list[gen.ShardPlan]) -> list[dict[str, Any]]:
    """Shards on this process's engine, overlapped: while shard k is verified (in the verifier's
    processes, from a Prefect worker thread), the engine generates and scores shard k+1. With
    ``verifier.overlap: false`` each shard is verified before the next is generated."""
    generate_t, verify_t = _with_retries(cfg, generate_shard_task), _with_retries(cfg, verify_shard_task)
    results: dict[int, dict[str, Any]] = {}
    outstanding: list[tuple[gen.ShardPlan, Any]] = []

    def collect(plan: gen.ShardPlan, future: Any) -> None:
        try:
            results[plan.index] = future.result()
        except Exception as e:
            raise _shard_failed(cfg, plan, e) from e
        progress.emit("shard.finished", index=plan.index)

    for plan in plans:
        try:
            generated = generate_t(cfg, run, plan)
        except Exception as e:
            # Let the shards already generated be verified and kept before stopping.
            for p, f in outstanding:
                with contextlib.suppress(Exception):
                    collect(p, f)
            raise _shard_failed(cfg, plan, e) from e
        if generated.get("skipped"):
            results[plan.index] = generated
            progress.emit("shard.finished", index=plan.index)
            continue
        outstanding.append((plan, verify_t.submit(cfg, run, plan, generated)))
        limit = MAX_PENDING_VERIFICATIONS if cfg.verifier.overlap else 0
        while len(outstanding) > limit:
            collect(*outstanding.pop(0))
    while outstanding:
        collect(*outstanding.pop(0))
    return [results[p.index] for p in plans]


def _ray_gpus_per_engine(cfg: RunConfig) -> float:
    import ray

    if cfg.ray.gpus_per_engine is not None:
        return cfg.ray.gpus_per_engine
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    return float(cfg.model.tensor_parallel_size) if has_gpus else 0.0


def run_shards_ray(cfg: RunConfig, run: RunDir, plans: list[gen.ShardPlan]) -> list[dict[str, Any]]:
    """Shards on a Ray cluster through prefect-ray. Engine stages ask for ``gpus_per_engine`` GPUs
    (the model's tensor-parallel size) and run with ``max_calls=0``, so Ray keeps reusing the same
    worker processes and each keeps its engine loaded across shards (Ray's default for GPU tasks is a
    fresh process per call, which would reload the model every shard). Verifier stages need no GPU
    and run as soon as their shard is generated, beside the engines. The run dir must be on a
    filesystem every worker sees."""
    try:
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError as e:
        raise RuntimeError(
            f"executor: ray needs prefect-ray and ray ({e}); install them with: pip install 'expo-data[ray]'"
        ) from None

    init_kwargs: dict[str, Any] = {"include_dashboard": False}
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:
        init_kwargs["num_cpus"] = cfg.ray.num_cpus
    generate_t, verify_t = _with_retries(cfg, generate_shard_task), _with_retries(cfg, verify_shard_task)
    with RayTaskRunner(address=cfg.ray.address, init_kwargs=init_kwargs) as runner:
        gpus = _ray_gpus_per_engine(cfg)
        get_run_logger().info("ray: %s, %s GPU(s) per engine", runner.address or "local cluster", gpus)
        generated = []
        with remote_options(num_cpus=cfg.ray.cpus_per_engine, num_gpus=gpus, max_calls=0):
            for plan in plans:
                generated.append(runner.submit(generate_t, {"cfg": cfg, "run": run, "plan": plan}))
        verified = []
        with remote_options(num_cpus=1, max_calls=0):
            for plan, g in zip(plans, generated, strict=True):
                verified.append(runner.submit(verify_t, {"cfg": cfg, "run": run, "plan": plan, "generated": g}))
        results = []
        failure: gen.ShardFailedError | None = None
        for plan, g, v in zip(plans, generated, verified, strict=True):
            try:
                results.append(v.result())
                progress.emit("shard.finished", index=plan.index)
            except Exception as e:
                # The engine stage's error says more than the verifier's "upstream failed".
                cause: BaseException = e
                try:
                    g.result()
                except Exception as engine_error:
                    cause = engine_error
                failure = failure or _shard_failed(cfg, plan, cause)
        if failure is not None:
            raise failure
    return results


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
    try:
        pool = shared_pool(cfg.verifier.workers, cfg.verifier.timeout_s)
        problems_summary = load_problems_task(cfg, run, pool)
        t_problems = time.monotonic()
        plans = gen.plan_shards(cfg, run)
        run_shards = run_shards_ray if cfg.executor == "ray" else run_shards_local
        shard_stats = run_shards(cfg, run, plans)
        t_shards = time.monotonic()
        build_stats = build_task(cfg, run)
        t_build = time.monotonic()
        timings: dict[str, Any] = {
            "problems_s": round(t_problems - t0, 3),
            "shards_s": round(t_shards - t_problems, 3),
            "build_s": round(t_build - t_shards, 3),
            "executor": cfg.executor,
            "shard_stages": gen.stage_timeline(shard_stats),
        }
        timings["total_s"] = round(time.monotonic() - t0, 3)
        summarize_task(cfg, run, problems_summary, shard_stats, build_stats, timings)
        report_task(cfg, run)
    finally:
        close_shared_pools()
    if cfg.publish is not None:
        from flows.publish import publish_task

        p = cfg.publish
        publish_task(str(run.root), p.repo, p.private, p.revision, p.tag, p.license)
    return str(run.root)
