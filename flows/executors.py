"""Where shard stages run: on this process's engine (``executor: local``) or on a Ray cluster.

A task takes a batch of shards (``shards_per_task``) and runs, for each, the engine stage and then
the verifier stage (``pipeline.stages``), verifying shard k in a thread while the engine generates
shard k+1. A batch rather than a shard per task: a Prefect task run costs the flow and its API about
0.2 s of CPU and a Ray task a dispatch, which at thousands of one-second shards was most of the
run; and the shard's verifier stage in its engine's process keeps a Ray cluster at one worker
process per engine, each with its verifier pool. A failing stage is retried within the batch, per
shard (:func:`run_batch` says why not by retrying the task). Both executors turn a shard that fails
every try into one :class:`ShardFailedError` naming it, after the shards already generated have been
verified and kept.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy

from pipeline import __version__, progress
from pipeline import stages as st
from pipeline.config import RunConfig
from pipeline.engines import get_engine, release_engines
from pipeline.errors import ConfigError, ShardFailedError
from pipeline.manifest import ShardOutcome
from pipeline.store import RunDir
from pipeline.verify import shared_pool

# The layout of a cached batch result; part of the cache key so that a result cached by an older
# layout is never handed back.
RESULT_FORMAT = "outcomes-2"

# Shards a verifier thread may have waiting behind the engine before it pauses: enough to keep the
# engine busy, few enough that a slow verifier does not let pending shards pile up.
MAX_PENDING_VERIFICATIONS = 2

# The most shards one task takes when shards_per_task is unset: a task's retry and its Prefect
# record stay small, and the per-task cost is already 1/32 of what it was.
MAX_AUTO_SHARDS_PER_TASK = 32


@dataclass(frozen=True)
class ShardBatch:
    """The shards one task runs, in plan order."""

    plans: tuple[st.ShardPlan, ...]

    @property
    def first(self) -> int:
        return self.plans[0].index

    @property
    def last(self) -> int:
        return self.plans[-1].index


class ShardStageError(Exception):
    """A shard's stage failed inside a batch: which shard, and the error as text (an engine's own
    exception type need not unpickle where Ray hands the error back)."""

    def __init__(self, index: int, kind: str, message: str) -> None:
        super().__init__(index, kind, message)
        self.index, self.kind, self.message = index, kind, message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def batches(plans: list[st.ShardPlan], count: int) -> list[ShardBatch]:
    """``plans`` in ``count`` consecutive batches whose sizes differ by one at most."""
    count = max(1, min(count, len(plans)))
    size, extra = divmod(len(plans), count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (i < extra)
        out.append(ShardBatch(tuple(plans[start:stop])))
        start = stop
    return out


def batch_count(cfg: RunConfig, shards: int, engines: int, per_engine: int = 4) -> int:
    """How many tasks the shards go in: ``shards / shards_per_task``; unset, a multiple of the
    engines, at least ``per_engine`` batches each (on Ray four, so no engine waits long for the
    last ones; locally one, as the next batch cannot start before this one's last shard is
    verified) and batches of at most 32 shards."""
    if cfg.shards_per_task is not None:
        return math.ceil(shards / cfg.shards_per_task)
    engines = max(engines, 1)
    return engines * max(per_engine, math.ceil(shards / (engines * MAX_AUTO_SHARDS_PER_TASK)))


def _batch_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's cache key of a batch: our shard keys (problems' text, output config, model files,
    template), the run dir and the code version, and only once every shard's file on disk is
    complete. So a Prefect cache hit can never claim a shard our done-marker does not, and a rerun
    or a retry from the UI agrees with a rerun from the command line."""
    batch, run = parameters["batch"], parameters["run"]
    if not all(run.shard_done(p.index, p.key) for p in batch.plans):
        return None
    keys = hashlib.sha256(" ".join(p.key for p in batch.plans).encode()).hexdigest()[:24]
    run_id = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()[:12]
    return f"expo-shards-{keys}-{run_id}-{__version__}-{RESULT_FORMAT}"


BATCH_CACHE = CachePolicy.from_cache_key_fn(_batch_cache_key)


def run_batch(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan], announce: bool = True) -> list[ShardOutcome]:
    """Both stages of every shard in ``plans`` on this process's long-lived engine and verifier
    pool, overlapped: while shard k is verified (in the pool's processes, from a thread), the engine
    generates and scores shard k+1; with ``verifier.overlap: false`` one after the other.

    A failing stage is retried here, per shard (``retries.shards`` times, ``retries.delay_s``
    apart, a crashed engine replaced by a fresh one), not by retrying the task: a retried task would
    find the shards it finished on disk and skip them, and their records (the stats run.json keeps
    per shard) would be lost. A shard that fails every try stops the batch once the shards generated
    before it are verified and kept. ``announce``: emit ``shard.finished`` here (where the flow's
    listeners are) rather than in the flow."""
    v, tries = cfg.verifier, cfg.retries.shards + 1
    pool = shared_pool(v.workers, v.timeout_s, v.extraction)
    logger = get_run_logger()
    done: list[ShardOutcome] = []
    outstanding: list[tuple[st.ShardPlan, Future[ShardOutcome]]] = []
    failure: ShardStageError | None = None

    def retried(plan: st.ShardPlan, stage: str, call: Callable[[], ShardOutcome], first: int = 0) -> ShardOutcome:
        """``call`` until it succeeds or the shard's tries (``first`` of them used) run out."""
        for attempt in range(first, tries):
            try:
                return call()
            except Exception as e:
                if stage == "engine":  # a crashed engine is not reused: the next try loads a fresh one
                    release_engines()
                if attempt + 1 >= tries:
                    raise ShardStageError(plan.index, type(e).__name__, str(e)) from e
                logger.warning(
                    "shard %d: %s stage failed (%s: %s); try %d of %d in %gs",
                    plan.index,
                    stage,
                    type(e).__name__,
                    e,
                    attempt + 2,
                    tries,
                    cfg.retries.delay_s,
                )
                time.sleep(cfg.retries.delay_s)
        raise AssertionError("unreachable")

    def generate(plan: st.ShardPlan) -> ShardOutcome:
        engine = get_engine(cfg.model, seed=cfg.generation.sampling.seed) if st.needs_engine(run, plan) else None
        return st.generate_shard(cfg, run, plan, engine, pool)

    def collect(plan: st.ShardPlan, future: Future[ShardOutcome]) -> None:
        try:
            outcome = future.result()
        except Exception as e:
            # The first try ran in the verifier thread; the others, if any, run here.
            if tries == 1:
                raise ShardStageError(plan.index, type(e).__name__, str(e)) from e
            outcome = retried(plan, "verifier", lambda: st.finish_shard(cfg, run, plan, pool), first=1)
        if outcome.record is not None:
            r = outcome.record
            logger.info(
                "shard %d: %d rows (generate %.1fs, score %.1fs, verify %.1fs)",
                plan.index,
                r.rows,
                r.generate_s,
                r.score_s,
                r.verify_s,
            )
        done.append(outcome)
        if announce:
            progress.emit("shard.finished", index=plan.index)

    with ThreadPoolExecutor(1, thread_name_prefix="expo-verify") as verifier:
        for plan in plans:
            try:
                generated = retried(plan, "engine", lambda plan=plan: generate(plan))
            except ShardStageError as e:
                failure = e
                break
            if generated.skipped:
                done.append(generated)
                if announce:
                    progress.emit("shard.finished", index=plan.index)
                continue
            outstanding.append((plan, verifier.submit(st.finish_shard, cfg, run, plan, pool)))
            limit = MAX_PENDING_VERIFICATIONS if v.overlap else 0
            try:
                while len(outstanding) > limit:
                    collect(*outstanding.pop(0))
            except ShardStageError as e:
                failure = e
                break
        # The shards already generated are verified and kept, even when a later one failed.
        for plan, future in outstanding:
            try:
                collect(plan, future)
            except ShardStageError as e:
                failure = failure or e
    if failure is not None:
        raise failure
    return sorted(done, key=lambda o: o.index)


@task(
    name="run-shards", cache_policy=BATCH_CACHE, persist_result=True, task_run_name="shards-{batch.first}-{batch.last}"
)
def shards_task(cfg: RunConfig, run: RunDir, batch: ShardBatch, announce: bool = True) -> list[ShardOutcome]:
    """A batch of shards on this process's (or this Ray worker's) engine and verifier pool."""
    return run_batch(cfg, run, list(batch.plans), announce)


def _shard_failed(cfg: RunConfig, batch: ShardBatch, e: BaseException) -> ShardFailedError:
    index = e.index if isinstance(e, ShardStageError) else batch.first
    plan = next((p for p in batch.plans if p.index == index), batch.plans[0])
    cause = str(e) if isinstance(e, ShardStageError) else f"{type(e).__name__}: {e}"
    return ShardFailedError(
        f"shard {plan.index} (problems {plan.start}..{plan.stop - 1}) failed after {cfg.retries.shards + 1} tries: "
        f"{cause}. Finished shards are kept; rerun the same command to resume."
    )


def run_shards_local(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan]) -> list[ShardOutcome]:
    """Shards on this process's engine, a batch per task, one batch after the other."""
    results: list[ShardOutcome] = []
    for batch in batches(plans, batch_count(cfg, len(plans), 1, per_engine=1)):
        try:
            results += shards_task(cfg, run, batch)
        except Exception as e:
            raise _shard_failed(cfg, batch, e) from e
    return results


def _ray_gpus_per_engine(cfg: RunConfig) -> float:
    import ray

    if cfg.ray.gpus_per_engine is not None:
        return cfg.ray.gpus_per_engine
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    return float(cfg.model.tensor_parallel_size) if has_gpus else 0.0


ENGINE_RESOURCE = "expo_engine"


def _ray_engines(cfg: RunConfig, gpus: float) -> int:
    """How many engine tasks the cluster runs at once, to size the batches."""
    import ray

    if cfg.ray.max_engines is not None:
        return cfg.ray.max_engines
    resources = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // cfg.ray.cpus_per_engine))


def run_shards_ray(cfg: RunConfig, run: RunDir, plans: list[st.ShardPlan]) -> list[ShardOutcome]:
    """Batches of shards on a Ray cluster through prefect-ray. A batch task asks for
    ``gpus_per_engine`` GPUs (the model's tensor-parallel size) and runs with ``max_calls=0``, so
    Ray keeps reusing the same worker processes and each keeps its engine and verifier pool across
    batches (Ray's default for GPU tasks is a fresh process per call, which would reload the model
    every time). The run dir must be on a filesystem every worker sees."""
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
    if cfg.ray.max_engines is not None:  # a custom resource only engine tasks ask for
        init_kwargs["resources"] = {ENGINE_RESOURCE: cfg.ray.max_engines}
        engine_slots = {ENGINE_RESOURCE: 1}
    with RayTaskRunner(address=cfg.ray.address, init_kwargs=init_kwargs) as runner:
        gpus = _ray_gpus_per_engine(cfg)
        engines = _ray_engines(cfg, gpus)
        todo = batches(plans, batch_count(cfg, len(plans), engines))
        get_run_logger().info(
            "ray: %s, %s GPU(s) per engine, %d engine(s) at once, %d task(s) of up to %d shards",
            runner.address or "local cluster",
            gpus,
            engines,
            len(todo),
            len(todo[0].plans),
        )
        with remote_options(num_cpus=cfg.ray.cpus_per_engine, num_gpus=gpus, max_calls=0, resources=engine_slots):
            futures = [
                runner.submit(shards_task, {"cfg": cfg, "run": run, "batch": b, "announce": False}) for b in todo
            ]
        results: list[ShardOutcome] = []
        failure: ShardFailedError | None = None
        for batch, future in zip(todo, futures, strict=True):
            try:
                outcomes = future.result()
            except Exception as e:
                failure = failure or _shard_failed(cfg, batch, e)
                continue
            results += outcomes
            for o in outcomes:  # the workers' events do not reach this process's listeners
                progress.emit("shard.finished", index=o.index)
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
