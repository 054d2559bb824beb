"""The problems table of a run dir: written from the sources (validated, decontaminated), expert
solution scores joined in, and an index by problem id.

The problems file is written in row groups (``PROBLEMS_ROW_GROUP``), so a reader that needs the
problems of one shard (the builders) decodes a few row groups, never the whole file, and memory does
not grow with the run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import __version__, progress
from pipeline.config import RunConfig
from pipeline.contamination import build_index
from pipeline.problems import ProblemSet, load_problems
from pipeline.sources import locate
from pipeline.store import (
    PROBLEMS_ROW_GROUP,
    RunDir,
    atomic_write,
    file_sha256,
    parquet_files,
    scan_table,
    write_parquet,
)
from pipeline.verify import VERIFIER_VERSION, VerifierPool
from schemas.run_doc import BenchmarkInfo, ContaminationInfo, ProblemsSummary

EXPERT_COLS = ("expert_nll_mean", "expert_nll_tokens", "expert_answer_logprob")


def finalize_problems(run: RunDir) -> None:
    """Join the per-shard expert-solution scores into the problems table, rewritten atomically one
    row group at a time (the scores are three numbers per problem; the texts are never all in
    memory). A problem without a new score keeps the one it has."""
    if not run.expert_scores.exists() or not parquet_files(run.expert_scores):
        return
    # One lazy scan of the shard files, not a pyarrow table per file concatenated: at 10,000 shards
    # 1.4 s and 80 MiB of allocator memory rather than 11 s and 125 MiB.
    files = parquet_files(run.expert_scores)
    scores = scan_table(files, "expert_scores").collect().unique("problem_id", keep="last")
    scores = scores.rename({c: f"_new_{c}" for c in EXPERT_COLS})
    source = pq.ParquetFile(run.problems)
    schemas.check(source.schema_arrow, "problems", where=str(run.problems))
    target = schemas.schema("problems")

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, target, compression="zstd") as writer:
            for rg in range(source.num_row_groups):
                part = pl.from_arrow(source.read_row_group(rg)).join(scores, on="problem_id", how="left")
                part = part.with_columns(pl.coalesce(f"_new_{c}", c).alias(c) for c in EXPERT_COLS)
                writer.write_table(part.select(target.names).to_arrow().cast(target), row_group_size=PROBLEMS_ROW_GROUP)

    atomic_write(run.problems, write)


class ProblemIndex:
    """Where each problem sits in the problems file (row position and row group), kept as ids and
    integers only, so a builder can read the few row groups holding one shard's problems."""

    def __init__(self, path: Path):
        self.file = pq.ParquetFile(path)
        schemas.check(self.file.schema_arrow, "problems", where=str(path))
        ids, groups = [], []
        for rg in range(self.file.num_row_groups):
            part = self.file.read_row_group(rg, columns=["problem_id"]).column(0)
            ids.append(part)
            groups.append(pa.array([rg] * len(part), pa.int32()))
        self.frame = pl.DataFrame(
            {
                "problem_id": pa.chunked_array(ids, pa.string()) if ids else pa.array([], pa.string()),
                "_rg": pa.chunked_array(groups, pa.int32()) if groups else pa.array([], pa.int32()),
            }
        ).with_row_index("_index")
        self.rows = self.frame.height

    def for_ids(self, ids: pl.Series) -> pl.LazyFrame:
        """The problems with these ids, with ``_index`` (their row in the file)."""
        wanted = self.frame.join(pl.DataFrame({"problem_id": ids.unique()}), on="problem_id", how="semi")
        parts = [pl.from_arrow(self.file.read_row_group(int(rg))) for rg in wanted["_rg"].unique().sort().to_list()]
        if not parts:
            empty = pl.from_arrow(schemas.empty("problems"))
            return empty.with_columns(pl.lit(None, pl.UInt32).alias("_index")).lazy()
        rows = pl.concat(parts).join(wanted.select("problem_id", "_index"), on="problem_id", how="inner")
        return rows.lazy()


def problem_rows(path: Path, start: int, stop: int) -> list[dict]:
    """Rows ``start`` to ``stop`` of the problems file, decoding only the row groups that hold them:
    what one shard's engine stage reads, so a run's reading grows with its problems, not with
    problems x shards."""
    f = pq.ParquetFile(path)
    schemas.check(f.schema_arrow, "problems", where=str(path))
    groups, first, offset = [], None, 0
    for rg in range(f.num_row_groups):
        n = f.metadata.row_group(rg).num_rows
        if offset + n > start and offset < stop:
            groups.append(rg)
            first = offset if first is None else first
        offset += n
    if not groups:
        return []
    table = f.read_row_groups(groups)
    return table.slice(start - first, stop - start).to_pylist()


def problems_fingerprint(cfg: RunConfig) -> str | None:
    """What the problems table is made from: the problems config, the code that validates, and the
    bytes of every local source and benchmark file. None when one is a Hub dataset (it can change
    under the same name), so those are always read again."""
    h = hashlib.sha256(json.dumps([cfg.problems.model_dump(), __version__, VERIFIER_VERSION]).encode())
    for src in [cfg.problems.source, *(b.source for b in cfg.problems.decontaminate)]:
        where = locate(src, what="problem source")
        if where.kind == "hub":
            return None
        root = Path(where.ref)
        for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f.as_posix().encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()[:24]


def write_problems(cfg: RunConfig, run: RunDir, pool: VerifierPool) -> ProblemsSummary:
    """Load, validate and write ``problems`` and ``problems_rejected``; returns the summary. A rerun
    whose sources and problems config are unchanged (:func:`problems_fingerprint`) keeps the tables
    it has: validating 40,000 golds again would cost a rerun minutes."""
    fingerprint = problems_fingerprint(cfg)
    previous = run.read_doc()
    kept = previous.problems if previous is not None else None
    if (
        fingerprint is not None
        and kept is not None
        and kept.fingerprint == fingerprint
        and run.problems.exists()
        and run.problems_rejected.exists()
    ):
        progress.emit("problems.done", reused=True, **kept.model_dump(exclude={"contamination"}))
        return kept
    progress.emit("problems.start", source=cfg.problems.source)
    index, contamination = None, None
    if cfg.problems.decontaminate:
        t0 = time.monotonic()
        index = build_index(cfg.problems.decontaminate, cfg.problems.decontaminate_ngram)
        contamination = ContaminationInfo(
            ngram=cfg.problems.decontaminate_ngram,
            benchmarks=[BenchmarkInfo(source=s, questions=n) for s, n in index.sources.items()],
            index_s=round(time.monotonic() - t0, 3),
        )
        progress.emit("problems.benchmarks", questions=len(index), benchmarks=len(index.sources))
    pset: ProblemSet = load_problems(
        cfg.problems,
        pool.check_golds,
        progress=lambda valid, read: progress.emit("problems.progress", valid=valid, read=read),
        overlap=index,
    )
    unscored = {"expert_nll_mean": None, "expert_nll_tokens": None, "expert_answer_logprob": None}
    problems = schemas.from_rows("problems", [{**p, **unscored} for p in pset.problems])
    write_parquet(problems, run.problems, row_group_size=PROBLEMS_ROW_GROUP)
    write_parquet(schemas.from_rows("problems_rejected", pset.rejected), run.problems_rejected)
    summary = ProblemsSummary(**pset.summary(), fingerprint=fingerprint)
    if contamination is not None:
        contamination.contaminated = summary.rejected_by_reason.get("contaminated", 0)
        summary.contamination = contamination
    progress.emit("problems.done", **summary.model_dump())
    return summary
