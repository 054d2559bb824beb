"""The run directory: where every table lands, written atomically and read back with its schema.

A file either exists complete or not at all (write to a temp file in the same folder, fsync, rename),
so a crash at any point leaves no half-written table for a rerun or a reader to trip over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

import schemas
from pipeline.errors import START_OVER, ConfigError, RunDirError
from pipeline.sources import RUN_DOC
from schemas.run_doc import RunDoc

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


def open_state(
    state_path: Path, config: dict[str, Any], what: str, force_new: bool, extends: Callable[[str], bool]
) -> dict[str, Any] | None:
    """The state file of a resumable loop (the online loop, the experiment) in its folder, made fresh
    with ``force_new``. A state made with another config is refused, naming the changed keys, unless
    every change is one ``extends`` accepts (more rounds, more arms): resuming it would mix two
    experiments in one folder. None when there is no state yet."""
    root = state_path.parent
    from pipeline.config_files import diff_configs

    if force_new and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    changed = [k for k in diff_configs(state.get("config", {}), config) if not extends(k)]
    if changed:
        raise ConfigError(
            f"{root} holds {what} with a different config (changed: {', '.join(changed)}); "
            f"use another output_dir, or start over there with {START_OVER}"
        )
    return state


VALIDATION = "validation"  # a training table's validation split: parts in this subfolder of the table


def parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    raise RunDirError(f"no such table file or folder: {path}")


def read_table(path: str | Path, name: str) -> pa.Table:
    """All Parquet files of one table (a file or a folder of shards), checked against its schema."""
    files = parquet_files(path)
    if not files:
        return schemas.empty(name)
    tables = []
    for f in files:
        t = pq.read_table(f)
        schemas.check(t.schema, name, where=str(f))
        if added := schemas.upgrades(t.schema, name):
            t = pl.from_arrow(t).with_columns(**added).to_arrow()
        tables.append(t.select(schemas.schema(name).names).cast(schemas.schema(name)))
    return pa.concat_tables(tables)


def scan_table(files: list[Path] | list[str], name: str) -> pl.LazyFrame:
    """A lazy scan of a table's Parquet files, each schema-checked, older versions brought up to
    date (the columns they lack filled as ``schemas.UPGRADES`` says)."""
    if not files:
        return pl.from_arrow(schemas.empty(name)).lazy()
    names = schemas.schema(name).names
    current, frames = [], []
    for f in files:
        actual = pq.read_schema(f)
        schemas.check(actual, name, where=str(f))
        if added := schemas.upgrades(actual, name):
            frames.append(pl.scan_parquet(f).with_columns(**added).select(names))
        else:
            current.append(str(f))
    if current:  # one scan of every current file: polars plans it as one source
        frames.insert(0, pl.scan_parquet(current).select(names))
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or folder, from the footers only."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def file_meta(path: str | Path, key: bytes) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(key)
    return value.decode() if value is not None else None


def rows_by_level(path: str | Path) -> dict[str, int]:
    """Rows of a table per ``level`` ("1".."5", "none" for rows without one), from the level column
    only: what run.json, the report and the dataset card count."""
    import polars as pl

    files = [str(f) for f in parquet_files(path)] if Path(path).exists() else []
    if not files:
        return {}
    frame = pl.scan_parquet(files)
    if "level" not in frame.collect_schema().names():
        return {}
    counts = frame.group_by("level").len().collect()
    return dict(sorted((("none" if lv is None else str(lv)), int(n)) for lv, n in counts.iter_rows()))


def _shares_a_folder(path: str, root: str) -> bool:
    """Whether two absolute paths meet below the filesystem root (a relative path between them then
    names no folder outside what they share)."""
    try:
        common = os.path.commonpath([path, root])
    except ValueError:  # different drives
        return False
    return os.path.dirname(common) != common  # "/" is its own parent


class RunDir:
    """Paths of one run and the owner of its run.json. Names here are fixed by us (the table
    registry in ``schemas``), never derived from input data."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- tables --------------------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        """The folder of a registered table; any other name (a path, a typo) is refused."""
        return self.root / schemas.table_spec(name).name

    def table(self, name: str) -> Path:
        """The folder of a training set (dpo, grpo, ...)."""
        if name not in schemas.DATASETS:
            raise schemas.SchemaError(
                f"not a dataset table: {name!r}; the training sets are {', '.join(schemas.DATASETS)}"
            )
        return self.folder(name)

    def location(self, name: str) -> Path:
        """Where a table's rows are: its one file, or its folder of shards."""
        spec = schemas.table_spec(name)
        return self.folder(name) / f"{name}.parquet" if spec.single_file else self.folder(name)

    @property
    def problems(self) -> Path:
        return self.location("problems")

    @property
    def problems_rejected(self) -> Path:
        return self.location("problems_rejected")

    @property
    def samples(self) -> Path:
        return self.folder("samples")

    @property
    def expert_scores(self) -> Path:
        return self.folder("expert_scores")

    @property
    def samples_pending(self) -> Path:
        """Shards between the engine stage and the verifier stage (no verdicts yet)."""
        return self.folder("samples_pending")

    @property
    def report(self) -> Path:
        return self.root / "report"

    def part(self, name: str, index: int) -> Path:
        """Shard ``index`` of a sharded table (samples, samples_pending, expert_scores)."""
        return self.folder(name) / f"shard-{index:05d}.parquet"

    def shard(self, index: int) -> Path:
        return self.part("samples", index)

    def expert_shard(self, index: int) -> Path:
        return self.part("expert_scores", index)

    def pending_shard(self, index: int) -> Path:
        return self.part("samples_pending", index)

    def pending_done(self, index: int, key: str) -> bool:
        path = self.pending_shard(index)
        return path.exists() and file_meta(path, SHARD_KEY_META) == key

    def shard_done(self, index: int, key: str) -> bool:
        """Done means: the file exists (so it is complete) and was written for this very key."""
        path = self.shard(index)
        return path.exists() and file_meta(path, SHARD_KEY_META) == key

    def clear(self) -> None:
        """Remove everything a run writes (and nothing else a user may keep in the folder)."""
        for sub in [*schemas.REGISTRY, self.report.name]:
            shutil.rmtree(self.root / sub, ignore_errors=True)
            for staging in (f".{sub}.new", f".{sub}.old"):
                shutil.rmtree(self.root / staging, ignore_errors=True)
        self.run_json.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temp files of writes that a killed process left half-done (``.NAME.*.tmp``,
        never visible to readers): a rerun starts from finished files only."""
        if not self.root.exists():
            return []
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    # -- run.json ------------------------------------------------------------------------------

    @property
    def run_json(self) -> Path:
        return self.root / RUN_DOC

    def read_doc(self) -> RunDoc | None:
        """run.json as a :class:`RunDoc` with the config's paths absolute again; None when there is
        none. A document that is not JSON, or lacks what every run.json has, fails naming it."""
        if not self.run_json.exists():
            return None
        try:
            raw = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.run_json} is not valid JSON ({e}); {START_OVER} starts the run over") from None
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.run_json} is not a JSON object")
        config = raw.get("config")
        if isinstance(config, dict):
            self._paths(config, absolute=True)
        try:
            return RunDoc.model_validate(raw)
        except ValidationError as e:
            problems = []
            for err in e.errors():
                key = ".".join(str(p) for p in err["loc"])
                problems.append(f"missing {key!r}" if err["type"] == "missing" else f"{key}: {err['msg']}")
            raise RunDirError(f"{self.run_json} cannot be read: {'; '.join(problems)}") from None

    def require_doc(self) -> RunDoc:
        """run.json of a run dir that must have one (publishing, rebuilding, inspecting)."""
        doc = self.read_doc()
        if doc is None:
            raise RunDirError(f"{self.root} has no {RUN_DOC}: not a run dir (or the run has not started)")
        return doc

    def write_doc(self, doc: RunDoc) -> Path:
        """Write run.json atomically, with the config's local paths relative to the run dir where
        they share a folder with it, so a run dir moved together with its inputs still reads."""
        data = doc.to_json()
        if isinstance(data.get("config"), dict):
            self._paths(data["config"], absolute=False)
        return write_json(data, self.run_json)

    def _paths(self, config: dict[str, Any], absolute: bool) -> None:
        """Config paths between their two forms: absolute in memory, and on disk relative to the run
        dir when they share a folder with it, always spelled ``.``, ``./x`` or ``../x`` (a Hub id
        never starts with a dot, so the two cannot be confused)."""
        from pipeline.config import PATH_FIELDS
        from pipeline.config_files import get_dotted, set_dotted

        root = str(self.root.resolve())

        def convert(value: Any) -> Any:
            if not isinstance(value, str) or not value:
                return value
            if absolute and (value == "." or value.startswith(("./", "../"))):
                return os.path.normpath(os.path.join(root, value))
            if not absolute and os.path.isabs(value) and _shares_a_folder(value, root):
                rel = os.path.relpath(value, root)
                return rel if rel == "." or rel.startswith("..") else f"./{rel}"
            return value

        for dotted in PATH_FIELDS:
            key = dotted.removesuffix("[]")
            value = get_dotted(config, key)
            if key == dotted:
                if isinstance(value, str):
                    set_dotted(config, key, convert(value))
            elif isinstance(value, list):  # a list of {source: path, ...}
                for item in value:
                    if isinstance(item, dict):
                        item["source"] = convert(item.get("source"))


def table_differences(
    a: RunDir, b: RunDir, names: Iterable[str] | None = None, float_tolerant: Iterable[tuple[str, str]] = ()
) -> list[str]:
    """How two run dirs' tables differ in content: rows, columns and every value, in order. File
    bytes are no test (they carry versions in their metadata); this is what "the same tables"
    means. Tables of different schema versions are compared on the columns they share, and the
    others are named. ``float_tolerant`` (table, column) pairs compare floats to a relative 1e-6."""
    import math

    tolerant = set(float_tolerant)
    out: list[str] = []
    for name in names or [s.name for s in schemas.RECORDED]:
        pa_, pb = a.location(name), b.location(name)
        if not pa_.exists() or not pb.exists():
            if pa_.exists() != pb.exists():
                out.append(f"{name}: only in {a.root if pa_.exists() else b.root}")
            continue
        ta, tb = (
            pa.concat_tables([pq.read_table(f) for f in files]) if (files := parquet_files(p)) else schemas.empty(name)
            for p in (pa_, pb)
        )
        if ta.num_rows != tb.num_rows:
            out.append(f"{name}: {ta.num_rows} rows vs {tb.num_rows}")
            continue
        for column in [c for c in ta.column_names if c not in tb.column_names]:
            out.append(f"{name}.{column}: only in {a.root}")
        for column in [c for c in tb.column_names if c not in ta.column_names]:
            out.append(f"{name}.{column}: only in {b.root}")
        for column in [c for c in ta.column_names if c in tb.column_names]:
            x, y = ta.column(column).to_pylist(), tb.column(column).to_pylist()
            if (name, column) in tolerant:
                same = all(
                    (u is None and v is None) or (u is not None and v is not None and math.isclose(u, v, rel_tol=1e-6))
                    for u, v in zip(x, y, strict=True)
                )
            else:
                same = x == y
            if not same:
                rows = sum(u != v for u, v in zip(x, y, strict=True))
                out.append(f"{name}.{column}: {rows} of {ta.num_rows} rows differ")
    return out
