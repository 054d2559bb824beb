"""Where a trainer's rows come from: a run dir on disk, a downloaded dataset folder, or a Hub repo.

Every source is checked against the table's schema before a trainer sees it, so a wrong folder or
an outdated table fails here with its name and columns, not as a KeyError deep inside TRL.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

import schemas
from pipeline.errors import SourceNotFoundError, TrainDataError
from pipeline.sources import Source, locate
from pipeline.store import file_sha256, parquet_files


def _locate(source: str) -> Source:
    try:
        return locate(source, what="training data")
    except SourceNotFoundError:
        raise TrainDataError(
            f"training data {source!r} is neither a run dir, a local folder nor a Hub repo id"
        ) from None


def describe_source(source: str, table: str, revision: str | None = None) -> dict[str, Any]:
    """What a trainer read, for train.json: the files and their hashes, or the repo and revision."""
    where = _locate(source)
    if where.local:
        files = parquet_files(where.path / table) if (where.path / table).exists() else []
        return {
            "kind": "run_dir" if where.kind == "run_dir" else "folder",
            "path": where.ref,
            "table": table,
            "files": {f.name: file_sha256(f) for f in files},
        }
    return {"kind": "hub", "repo": source, "table": table, "revision": revision}


def _check_columns(names: list[str], table: str, where: str) -> None:
    missing = [c for c in schemas.schema(table).names if c not in names]
    if missing:
        raise TrainDataError(f"table {table!r} from {where} lacks column(s): {', '.join(missing)}")


def load_table(source: str, table: str, revision: str | None = None) -> Any:
    """One table as a ``datasets.Dataset``.

    - a run dir (has run.json): its Parquet shards, each checked against the schema (version too);
    - any other local folder: read as a dataset repo (a Hub snapshot on disk, a publish dry-run);
    - ``owner/name`` not on disk: the Hub dataset's config of that name.
    """
    if table not in schemas.REGISTRY:
        raise TrainDataError(f"unknown table {table!r}; known: {', '.join(schemas.REGISTRY)}")
    from datasets import load_dataset

    src = _locate(source)
    path = src.path
    if src.kind == "run_dir":
        folder = path / table  # table names come from the registry only, checked above
        files = parquet_files(folder) if folder.exists() else []
        files = [f for f in files if pq.ParquetFile(f).metadata.num_rows > 0]
        if not files:
            raise TrainDataError(
                f"run dir {path} has no rows in table {table!r}: the run produced none "
                "(see its report), or it has not finished"
            )
        for f in files:
            schemas.check(pq.read_schema(f), table, where=str(f))
        ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        where = str(folder)
    elif src.kind == "folder":
        try:
            ds = load_dataset(str(path), name=table, split="train")
        except ValueError as e:
            raise TrainDataError(f"{path} has no dataset config {table!r}: {e}") from None
        where = str(path)
    elif src.kind == "hub":
        try:
            ds = load_dataset(source, name=table, split="train", revision=revision)
        except Exception as e:  # the Hub's errors vary (offline, 404, auth, missing config)
            raise TrainDataError(
                f"{source!r} is not a local folder, and loading it as a Hub dataset (config {table!r}) failed: "
                f"{type(e).__name__}: {e}"
            ) from None
        where = f"hub:{source}" + (f"@{revision}" if revision else "")
    else:
        raise TrainDataError(f"training data {source!r} is a file; give its run dir, dataset folder or Hub repo id")
    _check_columns(ds.column_names, table, where)
    if ds.num_rows == 0:
        raise TrainDataError(f"table {table!r} from {where} has no rows")
    return ds
