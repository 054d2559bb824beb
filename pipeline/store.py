"""The run directory: where every table lands, written atomically and read back with its schema.

A file either exists complete or not at all (write to a temp file in the same folder, fsync, rename),
so a crash at any point leaves no half-written table for a rerun or a reader to trip over.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas

SHARD_KEY_META = b"expo_data.shard_key"
PENDING_STATS_META = b"expo_data.engine_stats"


def atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, read in blocks: manifests record these for every file they name."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Rows per row group of the problems file: readers that need a shard's problems (the builders)
# decode a few row groups, not the whole file, so their memory does not grow with the run.
PROBLEMS_ROW_GROUP = 256


def write_parquet(
    table: pa.Table,
    path: str | Path,
    extra_meta: dict[bytes, bytes] | None = None,
    row_group_size: int | None = None,
) -> Path:
    path = Path(path)
    if extra_meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra_meta})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size))
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)
    return path


def parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    raise FileNotFoundError(f"no such table file or folder: {path}")


def read_table(path: str | Path, name: str) -> pa.Table:
    """All Parquet files of one table (a file or a folder of shards), checked against its schema."""
    files = parquet_files(path)
    if not files:
        return schemas.empty(name)
    tables = []
    for f in files:
        t = pq.read_table(f)
        schemas.check(t.schema, name, where=str(f))
        tables.append(t.select(schemas.schema(name).names).cast(schemas.schema(name)))
    return pa.concat_tables(tables)


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or folder, from the footers only."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def file_meta(path: str | Path, key: bytes) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(key)
    return value.decode() if value is not None else None


class RunDir:
    """Paths of one run. Names here are fixed by us, never derived from input data."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def problems(self) -> Path:
        return self.root / "problems" / "problems.parquet"

    @property
    def problems_rejected(self) -> Path:
        return self.root / "problems_rejected" / "problems_rejected.parquet"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def shard(self, index: int) -> Path:
        return self.samples / f"shard-{index:05d}.parquet"

    @property
    def expert_scores(self) -> Path:
        return self.root / "expert_scores"

    def expert_shard(self, index: int) -> Path:
        return self.expert_scores / f"shard-{index:05d}.parquet"

    def table(self, name: str) -> Path:
        """The folder of a derived table (dpo, grpo, ...); names come from schemas.DATASETS only."""
        if name not in schemas.DATASETS:
            raise ValueError(f"not a dataset table: {name!r}")
        return self.root / name

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def samples_pending(self) -> Path:
        return self.root / "samples_pending"

    def pending_shard(self, index: int) -> Path:
        """A shard's rows between the engine stage and the verifier stage (no verdicts yet)."""
        return self.samples_pending / f"shard-{index:05d}.parquet"

    def pending_done(self, index: int, key: str) -> bool:
        path = self.pending_shard(index)
        return path.exists() and file_meta(path, SHARD_KEY_META) == key

    def shard_done(self, index: int, key: str) -> bool:
        """Done means: the file exists (so it is complete) and was written for this very key."""
        path = self.shard(index)
        return path.exists() and file_meta(path, SHARD_KEY_META) == key

    def load_run_json(self) -> dict[str, Any] | None:
        if not self.run_json.exists():
            return None
        return json.loads(self.run_json.read_text())

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temp files of writes that a killed process left half-done (``.NAME.*.tmp``,
        never visible to readers): a rerun starts from finished files only."""
        if not self.root.exists():
            return []
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale
