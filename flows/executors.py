"""Where shard stages run: on this process's engine (``executor: local``) or on a Ray cluster.

Both executors run the same two Prefect tasks per shard, the engine stage and the verifier stage
(``pipeline.stages``), with the same retries, and both turn a shard that fails every try into one
:class:`ShardFailedError` naming it, after the shards already generated have been verified and kept.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy

from pipeline import __version__, progress
from pipeline import stages as st
from pipeline.config import RunConfig
from pipeline.engines import get_engine, release_engines
from pipeline.errors import ConfigError, ShardFailedError
from pipeline.manifest import ShardOutcome
from pipeline.store import RunDir
from pipeline.verify import shared_pool

# The layout of a cached verifier-stage result; part of the cache key so that a result cached by
# an older layout is never handed back.
RESULT_FORMAT = "outcome-1"


def _shard_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's cache key of a verifier stage: our shard key (problems' text, output config, model
    files, template), the run dir and the code version, and only once the shard's file on disk is
    complete. So a Prefect cache hit can never claim a shard our done-marker does not, and a rerun or
    a retry from the UI agrees with a rerun from the command line."""
    plan, run = parameters["plan"], parameters["run"]
    if not run.shard_done(plan.index, plan.key):
        return None
    run_id = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()[:12]
    return f"expo-shard-{plan.key}-{run_id}-{__version__}-{RESULT_FORMAT}"


SHARD_CACHE = CachePolicy.from_cache_key_fn(_shard_cache_key)


@task(name="generate-shard", cache_policy=NO_CACHE, task_run_name="generate-{plan.index}")
def generate_shard_task(cfg: RunConfig, run: RunDir, plan: st.ShardPlan) -> ShardOutcome:
    """The engine stage of a shard, on this process's (or this Ray worker's) long-lived engine."""
    engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed) if st.needs_engine(run, plan) else None
    v = cfg.verifier  # generation.explanations_for verifies a shard's CoTs in the engine stage
    pool = shared_pool(v.workers, v.timeout_s, v.extraction) if cfg.generation.verifies_cots_first else None
    try:
        return st.generate_shard(cfg, run, plan, engine, pool)
    except Exception:
        # A crashed engine is not reused: the retry (or the next shard) loads a fresh one.
        release_engines()
        raise


@task(name="verify-shard", cache_policy=SHARD_CACHE, persist_result=True, task_run_name="verify-{plan.index}")
def verify_shard_task(
    cfg: RunConfig, run: RunDir, plan: st.ShardPlan, generated: ShardOutcome | None = None
) -> ShardOutcome:
    """The verifier stage of a shard. ``generated`` (the engine stage's outcome, or its future) only
    orders this task after the engine stage; the stats themselves are read from the pending file."""
    v = cfg.verifier
    outcome = st.finish_shard(cfg, run, plan, shared_pool(v.workers, v.timeout_s, v.extraction))
    if outcome.record is not None:
        r = outcome.record
        get_run_logger().info(
            "shard %d: %d rows (generate %.1fs, score %.1fs, verify %.1fs)",
            plan.index,
            r.rows,
            r.generate_s,
            r.score_s,
            r.verify_s,
        )
    return outcome


def _shard_failed(cfg: RunConfig, plan: st.ShardPlan, e: BaseException) -> ShardFailedError:
    return ShardFailedError(
        f"shard {plan.index} (problems {plan.start}..{plan.stop - 1}) failed after "
        f"{cfg.retries.shards + 1} tries: {type(e).__name__}: {e}. Finished shards are kept; "
        "rerun the same command to resume."
    )


def _with_retries(cfg: RunConfig, t: Any) -> Any:
    return t.with_options(retries=cfg.retries.shards, retry_delay_seconds=cfg.retries.delay_s)


# Verifier stages allowed to wait behind the engine before it pauses: enough to keep the engine
# busy, few enough that a slow verifier does not let pending shards pile up.
MAX_PENDING_VERIFICATIONS = 2


def run_shards_local(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan]) -> list[ShardOutcome]:
    """Shards on this process's engine, overlapped: while shard k is verified (in the verifier's
    processes, from a Prefect worker thread), the engine generates and scores shard k+1. With
    ``verifier.overlap: false`` each shard is verified before the next is generated."""
    generate_t, verify_t = _with_retries(cfg, generate_shard_task), _with_retries(cfg, verify_shard_task)
    results: dict[int, ShardOutcome] = {}
    outstanding: list[tuple[st.ShardPlan, Any]] = []

    def collect(plan: st.ShardPlan, future: Any) -> None:
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
        if generated.skipped:
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


ENGINE_RESOURCE = "expo_engine"


def run_shards_ray(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan]) -> list[ShardOutcome]:
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
        raise ConfigError(
            f"executor: ray needs prefect-ray and ray ({e}); install them with: pip install 'expo-data[ray]'"
        ) from None

    init_kwargs: dict[str, Any] = {"include_dashboard": False}
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:
        init_kwargs["num_cpus"] = cfg.ray.num_cpus
    engine_slots: dict[str, float] = {}
    if cfg.ray.max_engines is not None:  # a custom resource only engine stages ask for
        init_kwargs["resources"] = {ENGINE_RESOURCE: cfg.ray.max_engines}
        engine_slots = {ENGINE_RESOURCE: 1}
    generate_t, verify_t = _with_retries(cfg, generate_shard_task), _with_retries(cfg, verify_shard_task)
    with RayTaskRunner(address=cfg.ray.address, init_kwargs=init_kwargs) as runner:
        gpus = _ray_gpus_per_engine(cfg)
        get_run_logger().info("ray: %s, %s GPU(s) per engine", runner.address or "local cluster", gpus)
        generated = []
        with remote_options(num_cpus=cfg.ray.cpus_per_engine, num_gpus=gpus, max_calls=0, resources=engine_slots):
            for plan in plans:
                generated.append(runner.submit(generate_t, {"cfg": cfg, "run": run, "plan": plan}))
        verified = []
        with remote_options(num_cpus=1, max_calls=0):
            for plan, g in zip(plans, generated, strict=True):
                verified.append(runner.submit(verify_t, {"cfg": cfg, "run": run, "plan": plan, "generated": g}))
        results = []
        failure: ShardFailedError | None = None
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


def run_shards(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan]) -> list[ShardOutcome]:
    """Every shard of the plan, in plan order: the finished ones skipped without a task run, the
    others through the configured executor."""
    skipped = {o.index: o for o in st.finished(run, plans)}
    todo = [p for p in plans if p.index not in skipped]
    ran = (run_shards_ray if cfg.executor == "ray" else run_shards_local)(cfg, run, todo) if todo else []
    outcomes = skipped | {o.index: o for o in ran}
    return [outcomes[p.index] for p in plans]
