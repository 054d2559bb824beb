"""The stages of a generation run, as plain functions the Prefect flow orchestrates.

problems (load, validate, write) -> plan shards -> per shard, the **engine stage** (render prompts,
one engine call for the shard's CoT and explanation requests, flag hint leaks, score the texts and
the expert solutions in at most one more call, write the rows without verdicts to
``samples_pending``; the per-text work is in :mod:`pipeline.completions`) and
the **verifier stage** (verify, write the samples shard, which is the shard's done-marker). Each
stage reads and writes the run dir, so it can run in another task, process or machine, and a rerun
skips what is already done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import progress
from pipeline.completions import (
    Extra,
    Generated,
    HintMeta,
    RequestMeta,
    build_requests,
    hint_requests,
    hint_rows,
    hinted_requests,
    leak_flags,
    sample_rows,
    score_shard,
)
from pipeline.config import RunConfig
from pipeline.engines import Engine, Request, Result, derive_seed
from pipeline.errors import RunDirError
from pipeline.manifest import KEY_COLUMNS, ShardOutcome, describe_engine, model_fingerprint, model_label, shard_keys
from pipeline.problem_table import problem_rows
from pipeline.prompts import get_template
from pipeline.scoring import NO_SCORES, ScoreCounts
from pipeline.store import (
    PENDING_STATS_META,
    SHARD_KEY_META,
    RunDir,
    read_table,
    write_parquet,
)
from pipeline.timeline import stamp, this_worker
from pipeline.verify import VerifierPool
from schemas.run_doc import EngineInfo, ShardRecord

# ----------------------------------------------------------------------------------------------
# Problems and the shard plan


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int
    stop: int
    key: str


def plan_shards(cfg: RunConfig, run: RunDir) -> list[ShardPlan]:
    problems = read_table(run.problems, "problems").select(KEY_COLUMNS)
    template = get_template(cfg.prompts.template)
    fp = model_fingerprint(cfg.model.path, cfg.model.revision)
    keys = shard_keys(cfg, fp, template, problems, cfg.shard_size)
    plans = []
    for index, (start, key) in enumerate(zip(range(0, len(problems), cfg.shard_size), keys, strict=True)):
        plans.append(ShardPlan(index, start, min(start + cfg.shard_size, len(problems)), key))
    progress.emit("shards.planned", total=len(plans), problems=problems.num_rows)
    return plans


# ----------------------------------------------------------------------------------------------
# The engine stage


def needs_engine(run: RunDir, plan: ShardPlan) -> bool:
    """Whether the engine stage has work: neither the shard nor its generated-but-unverified file
    exists for this key. Checked before an engine is loaded, so a resumed run loads none."""
    return not (run.shard_done(plan.index, plan.key) or run.pending_done(plan.index, plan.key))


def wants_explanations(setting: str | float, verdicts: list[str]) -> bool:
    """``generation.explanations_for`` on one problem's CoT verdicts: all; unsolved (no correct CoT);
    or a pass-rate threshold p (pass rate <= p)."""
    if setting == "all":
        return True
    rate = sum(v == "correct" for v in verdicts) / len(verdicts) if verdicts else 0.0
    return rate == 0.0 if setting == "unsolved" else rate <= float(setting)


@dataclass
class _Calls:
    """What the engine stage asked for and got: the sample requests with their results, the hint
    requests with theirs, and what ``explanations_for`` left out (texts per conditioning entry)."""

    requests: list[Request]
    results: list[Result]
    hint_reqs: list[Request]
    hint_results: list[Result]
    skipped_problems: int = 0
    skipped_texts: dict[str, int] = field(default_factory=dict)
    skipped_hints: int = 0


def _first_calls(
    cfg: RunConfig,
    requests: list[Request],
    meta: dict[str, RequestMeta],
    hint_reqs: list[Request],
    hint_meta: dict[str, HintMeta],
    engine: Engine,
    pool: VerifierPool | None,
    call_seed: int,
) -> _Calls:
    """One engine call for the CoTs, the conditioned requests and NuRL's hint requests; with
    ``explanations_for`` other than all for some conditioning, the CoTs first, verified, and then
    each conditioning's requests only for the problems its setting selects."""
    gen = cfg.generation
    if not gen.verifies_cots_first:
        results = engine.generate(requests + hint_reqs, call_seed=call_seed)
        return _Calls(requests, results[: len(requests)], hint_reqs, results[len(requests) :])
    if pool is None:
        raise ValueError("generation.explanations_for needs the verifier in the engine stage")
    cots = [r for r in requests if meta[r.request_id].kind == "cot"]
    cot_results = engine.generate(cots, call_seed=call_seed)
    groups = []
    for req, res in zip(cots, cot_results, strict=True):
        groups.append((meta[req.request_id].problem["answer"], [c.text for c in res.completions]))
    verdicts = {
        meta[req.request_id].problem["problem_id"]: [v.verdict for v in vs]
        for req, vs in zip(cots, pool.verify_groups(groups), strict=True)
    }

    def wanted(pid: str, entry: str) -> bool:
        return pid not in verdicts or wants_explanations(gen.explanations_setting(entry), verdicts[pid])

    rest = [r for r in requests if meta[r.request_id].kind != "cot"]
    keep = [r for r in rest if wanted(meta[r.request_id].problem["problem_id"], meta[r.request_id].entry)]
    hints = [
        r for r in hint_reqs if wanted(hint_meta[r.request_id].problem["problem_id"], hint_meta[r.request_id].label)
    ]
    more = engine.generate(keep + hints, call_seed=derive_seed(call_seed, "explanations")) if keep or hints else []
    kept = {r.request_id for r in keep} | {r.request_id for r in hints}
    skipped: dict[str, int] = {}
    left_out: set[str] = set()  # problems some conditioning left out
    for r in rest:
        if r.request_id not in kept:
            m = meta[r.request_id]
            skipped[m.entry] = skipped.get(m.entry, 0) + r.sampling.n
            left_out.add(m.problem["problem_id"])
    left_out |= {hint_meta[r.request_id].problem["problem_id"] for r in hint_reqs if r.request_id not in kept}
    return _Calls(
        cots + keep,
        cot_results + more[: len(keep)],
        hints,
        more[len(keep) :],
        skipped_problems=len(left_out),
        skipped_texts=skipped,
        skipped_hints=len(hint_reqs) - len(hints),
    )


def generate_shard(
    cfg: RunConfig, run: RunDir, plan: ShardPlan, engine: Engine | None, pool: VerifierPool | None = None
) -> ShardOutcome:
    """The engine stage of a shard: everything that needs the engine, so the engine can go on to
    the next shard while this one is verified in other processes. ``engine`` may be None only when
    :func:`needs_engine` says there is nothing to do; ``pool`` is needed with
    ``generation.explanations_for`` other than all."""
    if run.shard_done(plan.index, plan.key):
        progress.emit("shard.skipped", index=plan.index)
        return ShardOutcome(plan.index, plan.key, skipped=True)
    if run.pending_done(plan.index, plan.key):
        progress.emit("shard.generated", index=plan.index, resumed=True)
        return ShardOutcome(plan.index, plan.key, resumed=True)
    if engine is None:
        raise ValueError(f"shard {plan.index} needs an engine")
    t0, c0 = time.monotonic(), stamp()
    template = get_template(cfg.prompts.template)
    problems = problem_rows(run.problems, plan.start, plan.stop)
    requests, meta = build_requests(problems, cfg, engine, template)
    hint_reqs, hint_meta = hint_requests(problems, cfg, engine)
    progress.emit("shard.start", index=plan.index, problems=len(problems), requests=len(requests) + len(hint_reqs))
    call_seed = derive_seed(cfg.generation.sampling.seed, plan.key)
    calls = _first_calls(cfg, requests, meta, hint_reqs, hint_meta, engine, pool, call_seed)
    requests, results, hint_reqs, hint_results = calls.requests, calls.results, calls.hint_reqs, calls.hint_results
    # The requests that show a hint need the hint requests' output: a call of their own.
    hints = hint_rows(hint_reqs, hint_meta, hint_results, engine.name, model_label(cfg.model.path))
    hinted, hinted_meta = hinted_requests(problems, hints, cfg, engine, template)
    if hinted:
        requests, meta = requests + hinted, meta | hinted_meta
        results += engine.generate(hinted, call_seed=derive_seed(call_seed, "hinted"))
    gen = Generated(problems, requests, meta, results)
    t_gen, c_gen = time.monotonic(), stamp()
    flags = leak_flags(gen)
    if cfg.scoring.enabled:
        scores, expert_rows, counts = score_shard(
            gen, engine, template, cfg.scoring, cfg.prompts.system, cfg.verifier.extraction
        )
    else:
        scores, expert_rows = [[NO_SCORES] * len(res.completions) for res in results], []
        counts = ScoreCounts()
    extras = [
        [Extra(leak, reason, sc) for (leak, reason), sc in zip(frow, srow, strict=True)]
        for frow, srow in zip(flags, scores, strict=True)
    ]
    t_score, c_score = time.monotonic(), stamp()
    rows = sample_rows(cfg, plan.index, gen, extras, engine.name)
    shard_meta = {SHARD_KEY_META: plan.key.encode()}
    # Before the samples shard: that file is the done-marker, so it must come last.
    if cfg.scoring.enabled:
        write_parquet(schemas.from_rows("expert_scores", expert_rows), run.expert_shard(plan.index), shard_meta)
    if hint_reqs:
        write_parquet(schemas.from_rows("hints", hints), run.part("hints", plan.index), shard_meta)
    record = ShardRecord(
        index=plan.index,
        key=plan.key,
        problems=len(problems),
        rows=len(rows),
        generate_s=round(t_gen - t0, 3),
        score_s=round(t_score - t_gen, 3),
        engine=this_worker(),
        stages={"generate": [c0, c_gen], "score": [c_gen, c_score]},
        generated_tokens=sum(len(c.token_ids) for res in results + hint_results for c in res.completions),
        score_passes=counts.passes,
        scored_tokens=counts.targets,
        scored_expert_tokens=counts.expert_targets,
        answers_reused=counts.answers_reused,
        explanations_skipped_problems=calls.skipped_problems,
        explanations_skipped_texts=sum(calls.skipped_texts.values()),
        explanations_skipped_by_entry=calls.skipped_texts or None,
        hint_requests_skipped=calls.skipped_hints,
    )
    info = describe_engine(engine)
    # The engine stage's record travels in the pending file, so a verifier stage in another
    # process, or after a crash, still reports it.
    pending_meta = {**shard_meta, PENDING_STATS_META: _pending_stats(record, info)}
    write_parquet(schemas.from_rows("samples_pending", rows), run.pending_shard(plan.index), pending_meta)
    progress.emit("shard.generated", index=plan.index, rows=len(rows))
    return ShardOutcome(plan.index, plan.key, record=record, engine=info)


def _pending_stats(record: ShardRecord, info: EngineInfo) -> bytes:
    return json.dumps({**record.model_dump(mode="json", exclude_none=True), "engine_info": info.model_dump()}).encode()


def _read_pending_stats(raw: bytes) -> tuple[ShardRecord, EngineInfo | None]:
    data = json.loads(raw)
    info = data.pop("engine_info", None)
    data.pop("skipped", None)  # written by expo-data before run.json had a schema
    return ShardRecord.model_validate(data), EngineInfo.model_validate(info) if info else None


# ----------------------------------------------------------------------------------------------
# The verifier stage


def _verify_pending(table: pa.Table, pool: VerifierPool) -> pa.Table:
    """Fill the verdict columns of a pending shard, one verifier job per problem (CoT and
    explanations together) so each gold answer is parsed once. Rows the engine failed keep the
    ``error`` verdict they were written with."""
    pids = table.column("problem_id").to_pylist()
    golds = table.column("gold").to_pylist()
    texts = table.column("completion").to_pylist()
    verdicts = table.column("verdict").to_pylist()
    details = table.column("verdict_detail").to_pylist()
    extracted: list[str | None] = [None] * len(pids)
    parsed: list[str | None] = [None] * len(pids)
    by: list[str | None] = [None] * len(pids)
    alt: list[str | None] = [None] * len(pids)
    slots: dict[str, list[int]] = {}
    gold_of: dict[str, str] = {}
    for i, pid in enumerate(pids):
        if verdicts[i] is None:
            slots.setdefault(pid, []).append(i)
            gold_of[pid] = golds[i]
    order = list(slots)
    grouped = pool.verify_groups([(gold_of[pid], [texts[i] for i in slots[pid]]) for pid in order])
    for pid, group in zip(order, grouped, strict=True):
        for i, v in zip(slots[pid], group, strict=True):
            verdicts[i], details[i], extracted[i], parsed[i] = v.verdict, v.detail, v.extracted, v.parsed
            by[i], alt[i] = v.by, v.alt_verdict
    columns = {
        "verdict": pa.array(verdicts, pa.string()),
        "verdict_detail": pa.array(details, pa.string()),
        "extracted": pa.array(extracted, pa.string()),
        "parsed_answer": pa.array(parsed, pa.string()),
        "extracted_by": pa.array(by, pa.string()),
        "alt_verdict": pa.array(alt, pa.string()),
    }
    arrays = [columns.get(name, table.column(name)) for name in schemas.SAMPLES.names]
    return pa.Table.from_arrays(arrays, schema=schemas.SAMPLES)


def finish_shard(cfg: RunConfig, run: RunDir, plan: ShardPlan, pool: VerifierPool) -> ShardOutcome:
    """The verifier stage of a shard: verify the pending rows and write the samples shard (the
    done-marker), then drop the pending file. Needs no engine, so it runs beside the next shard's
    generation (the flow's overlap) or on any Ray worker."""
    if run.shard_done(plan.index, plan.key):
        run.pending_shard(plan.index).unlink(missing_ok=True)
        return ShardOutcome(plan.index, plan.key, skipped=True)
    path = run.pending_shard(plan.index)
    if not run.pending_done(plan.index, plan.key):
        raise RunDirError(f"shard {plan.index}: no generated rows for this key at {path}; rerun to generate them")
    t0, c0 = time.monotonic(), stamp()
    pending = pq.read_table(path)
    record, info = _read_pending_stats((pending.schema.metadata or {})[PENDING_STATS_META])
    table = _verify_pending(pending, pool)
    t_ver, c_ver = time.monotonic(), stamp()
    progress.emit("shard.writing", index=plan.index, rows=table.num_rows)
    write_parquet(table, run.shard(plan.index), extra_meta={SHARD_KEY_META: plan.key.encode()})
    path.unlink(missing_ok=True)
    record.verify_s = round(t_ver - t0, 3)
    record.write_s = round(time.monotonic() - t_ver, 3)
    record.verifier = this_worker()
    record.stages = {**record.stages, "verify": [c0, c_ver], "write": [c_ver, stamp()]}
    # Busy time of this shard's stages; wall time between its first and last stamp can be longer
    # (the flow overlaps stages of different shards).
    record.total_s = round(record.generate_s + record.score_s + record.verify_s + record.write_s, 3)
    progress.emit("shard.done", **record.model_dump(exclude={"stages", "engine", "verifier"}))
    return ShardOutcome(plan.index, plan.key, record=record, engine=info)


def finished(run: RunDir, plans: list[ShardPlan]) -> list[ShardOutcome]:
    """The shards already written for their key (a rerun's skips), found before any task runs: a
    rerun of 10,000 finished shards costs a footer read each, not a task run each. A pending file
    left beside a finished shard (a crash between the write and its removal) is removed."""
    out = []
    for plan in plans:
        if run.shard_done(plan.index, plan.key):
            run.pending_shard(plan.index).unlink(missing_ok=True)
            progress.emit("shard.skipped", index=plan.index)
            progress.emit("shard.finished", index=plan.index)
            out.append(ShardOutcome(plan.index, plan.key, skipped=True))
    return out


def run_shard(cfg: RunConfig, run: RunDir, plan: ShardPlan, engine: Engine, pool: VerifierPool) -> ShardOutcome:
    """Both stages of one shard, one after the other (no overlap); a finished shard is skipped."""
    generated = generate_shard(cfg, run, plan, engine, pool)
    if generated.skipped:
        return generated
    return finish_shard(cfg, run, plan, pool)
