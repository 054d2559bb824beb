"""The problems table of a run dir: expert-solution scores joined in, and an index by problem id.

The problems file is written in row groups (``PROBLEMS_ROW_GROUP``), so a reader that needs the
problems of one shard (the builders) decodes a few row groups, never the whole file, and memory does
not grow with the run.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.store import PROBLEMS_ROW_GROUP, RunDir, atomic_write, parquet_files, read_table

EXPERT_COLS = ("expert_nll_mean", "expert_nll_tokens", "expert_answer_logprob")


def finalize_problems(run: RunDir) -> None:
    """Join the per-shard expert-solution scores into the problems table, rewritten atomically one
    row group at a time (the scores are three numbers per problem; the texts are never all in
    memory). A problem without a new score keeps the one it has."""
    if not run.expert_scores.exists() or not parquet_files(run.expert_scores):
        return
    scores = pl.from_arrow(read_table(run.expert_scores, "expert_scores")).unique("problem_id", keep="last")
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
