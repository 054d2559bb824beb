"""A rerun that finds nothing to do leaves the derived tables, summary and report as they are.

Every shard done for its key, the same build settings and the same code: the training sets, the
summary, the conditioning comparison and the report would come out the same, and making them again
reads every samples shard several times (about 80 s at 10,000 shards). :func:`outputs_key` names
what they were made from; ``finish_run`` records it, :func:`pipeline.build.forget_outputs_key`
clears it before any build touches a table (so a build killed halfway is never taken as done), and
:func:`unchanged` accepts a rerun only when the key matches and every file run.json lists, and the
report, are still there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import schemas
from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.manifest import ShardOutcome, now
from pipeline.stages import ShardPlan
from pipeline.store import RunDir, parquet_files
from schemas.run_doc import LastInvocation, ProblemsSummary, RunDoc, Timings


def outputs_key(cfg: RunConfig, run: RunDir, plans: Iterable[ShardPlan]) -> str:
    """What the derived outputs depend on: every shard's key (its problems, the output config, the
    model, the prompts) and its file as it is on disk (a shard written again, even with the same
    key, is new input), the problems table, the build settings, the code and the table schemas."""
    files = [run.problems, *parquet_files(run.samples)]
    payload = {
        "shards": [p.key for p in plans],
        "files": [[f.name, st.st_size, st.st_mtime_ns] for f in files if f.exists() for st in [f.stat()]],
        "build": cfg.build.model_dump(mode="json"),
        "code": __version__,
        "schemas": {name: schemas.version(s) for name, s in schemas.TABLES.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def unchanged(run: RunDir, previous: RunDoc | None, key: str, outcomes: list[ShardOutcome]) -> bool:
    """Whether this invocation may keep the outputs as they are: it generated no shard, and the
    outputs on disk were made from the same ``key``."""
    if previous is None or previous.outputs_key != key or not all(o.skipped for o in outcomes):
        return False
    files = [run.root / f for entry in previous.tables.values() for f in entry.files]
    return (run.report / "report.md").is_file() and all(f.is_file() for f in files)


def finish_unchanged(
    run: RunDir, previous: RunDoc, problems: ProblemsSummary, outcomes: list[ShardOutcome], timings: Timings
) -> RunDoc:
    """run.json after a rerun that changed nothing: complete again, with this invocation's problems
    summary, skips and timings; every other section as the invocation that made the outputs wrote it."""
    doc = previous.model_copy(
        update={
            "status": "complete",
            "updated": now(),
            "problems": problems,
            "last_invocation": LastInvocation(shards_skipped=[o.index for o in outcomes]),
            "timings": timings,
        }
    )
    run.write_doc(doc)
    return doc
