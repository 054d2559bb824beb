"""Run identity and run.json: what makes two shards the same, and what a run dir records about itself.

- A shard's key hashes everything that determines its rows (the problems' text, the config keys
  that change output, the model files, the prompt template, the code version), so a rerun reuses a
  shard exactly when it would write the same rows.
- run.json (:class:`schemas.run_doc.RunDoc`) is started before any table is written, so a killed
  run still refuses a rerun with another config, and finished at the end with versions, counts,
  timings and a hash of every table file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

import schemas
from pipeline import __version__, conditionings
from pipeline.comparison import compare_run
from pipeline.config import RunConfig
from pipeline.config_files import diff_configs
from pipeline.engines import Engine
from pipeline.errors import START_OVER, ExpoDataError, RunDirConflictError
from pipeline.prompts import PromptTemplate, chat_template_digest, get_template, load_tokenizer, repeated_instruction
from pipeline.sampling import describe as describe_sampling
from pipeline.sources import locate_model
from pipeline.store import VALIDATION, RunDir, file_sha256, parquet_files, parquet_rows
from pipeline.summary import explanation_saving
from pipeline.verify import VERIFIER_VERSION
from pipeline.versions import dist_version, runtime_versions
from schemas.run_doc import (
    BuildStats,
    EngineInfo,
    LastInvocation,
    ModelInfo,
    ProblemsSummary,
    PromptsInfo,
    RunDoc,
    RunSummary,
    ShardRecord,
    TableEntry,
    Timings,
    VerifierInfo,
)

# Config keys that change no generated row: a rerun may change them freely (build settings only
# change the derived tables, which every run rebuilds).
NEUTRAL_KEYS = (
    "name",
    "output_dir",
    "verifier.workers",
    "verifier.overlap",
    "model.hf_score_tokens",  # how scoring is batched: the same numbers up to float rounding
    "build",
    "publish",
    "retries",
    "executor",
    "ray",
    "shards_per_task",
)
# Keys that change which problems a shard holds, not how a problem's rows are made: the shard key
# covers them through the problems' content instead. ``model.path`` is covered by the model's
# fingerprint and its label: a local folder's absolute path must not make a shard's key (and the
# sampling seed drawn from it) depend on where the checkout lies.
NON_OUTPUT_KEYS = (*NEUTRAL_KEYS, "shard_size", "problems", "model.path")
# Settings added after run dirs existed, left out of the key at their default (which makes the rows
# they made before): a new option must not regenerate every shard of a run that does not use it.
KEY_OMITTED_AT_DEFAULT = {"scoring.kinds": "all"}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    omitted = [k for k, default in KEY_OMITTED_AT_DEFAULT.items() if _at(data, k) == default]
    for dotted in (*NON_OUTPUT_KEYS, *omitted):
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        node.pop(parts[-1], None)
    return data


def _at(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


# The problems' columns a shard's key covers. The expert solution is scored, and QuestA shows part of it.
KEY_COLUMNS = ["problem_id", "question", "answer", "level", "subject", "expert_solution"]


def shard_keys(
    cfg: RunConfig, model_fp: str, template: PromptTemplate, problems: list[dict[str, Any]] | pa.Table, size: int
) -> list[str]:
    """The key of each shard of ``size`` problems: a hash of everything that determines its rows,
    problem text included (an edited question under the same id must not reuse old samples). The
    part every shard shares is serialised once, so planning 10,000 shards hashes their problems and
    little else. ``problems`` may be an Arrow table (of :data:`KEY_COLUMNS` at least), turned into
    Python rows one shard at a time: 40,000 problems as dicts at once stay in the process's memory."""
    shared = {
        "config": output_config(cfg),
        "model": [model_fp, model_label(cfg.model.path)],
        "template": template.digest,
        "conditionings": conditionings.digests(cfg, template),
        "code": [__version__, VERIFIER_VERSION, schemas.version(schemas.SAMPLES)],
    }
    head = json.dumps(shared, sort_keys=True)
    keys = []
    for start in range(0, len(problems), size):
        part = (
            problems.slice(start, size).to_pylist()
            if isinstance(problems, pa.Table)
            else problems[start : start + size]
        )
        rows = [[p[c] for c in KEY_COLUMNS] for p in part]
        payload = head + json.dumps(rows)
        keys.append(hashlib.sha256(payload.encode()).hexdigest()[:24])
    return keys


def shard_key(cfg: RunConfig, model_fp: str, template: PromptTemplate, problems: list[dict[str, Any]]) -> str:
    """The key of one shard holding ``problems``."""
    return shard_keys(cfg, model_fp, template, problems, max(len(problems), 1))[0]


def changed_output_keys(old: dict[str, Any], new: RunConfig) -> list[str]:
    """Dotted keys that differ between a recorded config and ``new`` and would change rows."""
    return [
        k for k in diff_configs(old, new.model_dump()) if not any(k == n or k.startswith(n + ".") for n in NEUTRAL_KEYS)
    ]


# ----------------------------------------------------------------------------------------------
# The engine as run.json describes it


def describe_prompts(cfg: RunConfig) -> PromptsInfo:
    """The prompt template, the system turn, and what rendering them through the model's chat
    template warns of (an instruction said twice)."""
    template = get_template(cfg.prompts.template)
    warning = _prompt_warning(
        cfg.model.path, cfg.model.revision, cfg.model.trust_remote_code, template, cfg.prompts.system
    )
    return PromptsInfo(**template.to_dict(), system=cfg.prompts.system, warnings=[warning] if warning else [])


@lru_cache(maxsize=8)
def _prompt_warning(
    path: str, revision: str | None, trust_remote_code: bool, template: PromptTemplate, system: str | None
) -> str | None:
    try:
        return repeated_instruction(load_tokenizer(path, revision, trust_remote_code), template, system)
    except (OSError, ValueError, ExpoDataError):  # the engine stage reports an unusable tokenizer
        return None


def describe_engine(engine: Engine) -> EngineInfo:
    return EngineInfo(
        engine=engine.name,
        max_model_len=engine.max_model_len,
        per_request_seeds=engine.supports_request_seed,
        chat_template_digest=chat_template_digest(engine.tokenizer),
        chat_template=engine.tokenizer.chat_template,
    )


@dataclass
class ShardOutcome:
    """What one shard's stages did in this invocation. ``record`` holds the stats of the stages
    that ran (None when the shard was finished before); ``engine`` describes the engine where the
    engine stage ran (a Ray worker, say), so the flow never loads a model just to describe it."""

    index: int
    key: str
    skipped: bool = False
    resumed: bool = False
    record: ShardRecord | None = None
    engine: EngineInfo | None = None


def engine_description(run: RunDir, outcomes: list[ShardOutcome], load: Callable[[], Engine]) -> EngineInfo:
    """The engine as the engine stage described it, or as the previous run.json recorded it when
    every shard was skipped; an engine is loaded here only when neither exists."""
    for o in outcomes:
        if o.engine is not None:
            return o.engine
    previous = run.read_doc()
    if all(o.skipped for o in outcomes) and previous is not None and previous.model and previous.model.engine:
        return EngineInfo(**{k: v for k, v in previous.model.model_dump().items() if k in EngineInfo.model_fields})
    return describe_engine(load())


# ----------------------------------------------------------------------------------------------
# run.json


def table_manifest(run: RunDir) -> dict[str, TableEntry]:
    """Rows and file hashes of every table: what a consumer checks to know it has the same data."""
    out: dict[str, TableEntry] = {}
    for spec in schemas.RECORDED:
        folder = run.folder(spec.name)
        if not folder.exists():
            continue
        held = folder / VALIDATION  # a training set's validation split
        files = parquet_files(folder) + (parquet_files(held) if held.is_dir() else [])
        out[spec.name] = TableEntry(
            rows=parquet_rows(folder),
            validation_rows=parquet_rows(held) if held.is_dir() else None,
            files={f.relative_to(run.root).as_posix(): file_sha256(f) for f in files},
        )
    return out


def check_resumable(cfg: RunConfig, force: bool = False) -> RunDoc | None:
    """The run already in ``cfg.output_dir`` (None if none, or if ``force`` starts over), refusing one
    made with a config whose rows would differ. Cheap: the command line checks it before it starts
    anything."""
    run = RunDir(cfg.output_dir)
    previous = None if force else run.read_doc()
    if previous is not None:
        old = previous.config.model_dump() if previous.config is not None else {}
        changed = changed_output_keys(old, cfg)
        if changed:
            raise RunDirConflictError(
                f"{run.root} holds a run made with a different config (changed: {', '.join(changed)}); "
                f"its rows would mix with new ones. Use another output_dir, or start over there with {START_OVER}."
            )
    return previous


def preflight(cfg: RunConfig, force: bool = False) -> RunDoc | None:
    """What a run checks before anything is written or started (the CLI calls it before a Prefect
    server starts for nothing): the model exists, the scoring covers the build, and the run dir may
    be resumed with this config. Returns the run dir's previous document, if any."""
    locate_model(cfg.model.path)
    cfg.check_scoring()
    return check_resumable(cfg, force)


def start_run(cfg: RunConfig, force: bool = False) -> RunDir:
    """Create the run dir, or check that an existing one was made with a compatible config, and
    record the config before any table is written (a run killed before its end must still refuse a
    rerun with a different config)."""
    previous = preflight(cfg, force)
    run = RunDir(cfg.output_dir)
    if force:
        run.clear()
    run.root.mkdir(parents=True, exist_ok=True)
    run.remove_stale_temp_files()
    doc = previous or RunDoc(expo_data_version=__version__, name=cfg.name, status="running", created=now())
    doc.status, doc.config, doc.config_fingerprint = "running", cfg, cfg.fingerprint()
    doc.sampling = describe_sampling(cfg.generation, cfg.model.path, cfg.model.revision)
    doc.prompts = describe_prompts(cfg)
    run.write_doc(doc)
    return run


@dataclass
class RunResults:
    """What one invocation of the generate flow produced, for run.json."""

    problems: ProblemsSummary
    shards: list[ShardOutcome]
    summary: RunSummary
    build: BuildStats
    timings: Timings
    engine: EngineInfo
    outputs_key: str | None = None  # pipeline.rerun.outputs_key


def finish_run(cfg: RunConfig, run: RunDir, results: RunResults) -> RunDoc:
    """Complete run.json. Per-shard stats are those of the invocation that generated the shard; a
    rerun that skips a shard keeps them, and says what it did itself under ``last_invocation``."""
    previous = run.read_doc()
    shards = dict(previous.shards) if previous is not None else {}
    for o in results.shards:
        if o.record is not None:
            shards[str(o.index)] = o.record
    doc = RunDoc(
        expo_data_version=__version__,
        name=cfg.name,
        status="complete",
        created=(previous.created if previous is not None else None) or now(),
        updated=now(),
        config=cfg,
        config_fingerprint=cfg.fingerprint(),
        model=ModelInfo(
            id=model_label(cfg.model.path),
            revision=cfg.model.revision,
            fingerprint=model_fingerprint(cfg.model.path, cfg.model.revision),
            **results.engine.model_dump(),
        ),
        prompts=describe_prompts(cfg),
        verifier=VerifierInfo(version=VERIFIER_VERSION, math_verify=dist_version("math-verify")),
        versions=runtime_versions(cfg.model.engine),
        schemas={name: schemas.version(s) for name, s in schemas.TABLES.items()},
        problems=results.problems,
        shards={k: shards[k] for k in sorted(shards, key=int)},
        last_invocation=LastInvocation(
            shards_generated=[o.index for o in results.shards if not o.skipped],
            shards_skipped=[o.index for o in results.shards if o.skipped],
        ),
        summary=results.summary,
        build=results.build,
        explanations_for=explanation_saving(cfg.generation, run, shards),
        conditionings=compare_run(run, conditionings.describe(cfg, get_template(cfg.prompts.template))),
        scoring=cfg.scoring,
        sampling=describe_sampling(cfg.generation, cfg.model.path, cfg.model.revision),
        tables=table_manifest(run),
        timings=results.timings,
        outputs_key=results.outputs_key,
    )
    run.write_doc(doc)
    return doc
