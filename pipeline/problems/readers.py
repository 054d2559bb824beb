"""Reading problem sources: JSONL and Parquet files, folders of them, and Hub datasets (or local
folders laid out like one) through ``datasets``. A row that cannot be read becomes a
:class:`RawRow` with an error, for quarantine; a source that cannot be read at all fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ProblemsConfig
from pipeline.errors import ProblemsError
from pipeline.sources import locate

MATH_SUBJECTS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]


@dataclass(frozen=True)
class HubSpec:
    format: str
    subsets: list[str] | None  # configs loaded (and concatenated) when the user names none
    split: str


# The Hub datasets users name first. Anything else: `format` and `columns` in the config.
HUB_DATASETS: dict[str, HubSpec] = {
    "EleutherAI/hendrycks_math": HubSpec("math", MATH_SUBJECTS, "train"),
    "HuggingFaceH4/MATH-500": HubSpec("math", None, "test"),
    "DigitalLearningGmbH/MATH-lighteval": HubSpec("math", None, "train"),
    "openai/gsm8k": HubSpec("gsm8k", ["main"], "train"),
}


@dataclass
class RawRow:
    source: str
    row: int
    data: dict[str, Any] | None
    error: str | None = None


def _read_jsonl(path: Path, label: str) -> Iterator[RawRow]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh):
            if not raw.strip():
                continue
            try:
                # utf-8-sig on the first line: files saved by Windows tools start with a BOM.
                data = json.loads(raw.decode("utf-8-sig" if n == 0 else "utf-8"))
            except UnicodeDecodeError as e:
                yield RawRow(label, n, None, f"line {n + 1}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                yield RawRow(label, n, None, f"line {n + 1}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(data, dict):
                yield RawRow(label, n, None, f"line {n + 1}: expected a JSON object, got {type(data).__name__}")
                continue
            yield RawRow(label, n, data)


def _read_parquet(path: Path, label: str) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ProblemsError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for data in batch.to_pylist():
            yield RawRow(label, n, data)
            n += 1


def _read_file(path: Path, label: str) -> Iterator[RawRow]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, label)
    if suffix == ".parquet":
        return _read_parquet(path, label)
    raise ProblemsError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet, or a Hub dataset id")


def _read_datasets(source: str, subsets: list[str] | None, split: str, revision: str | None) -> Iterator[RawRow]:
    """A Hub dataset, or a local folder laid out like one (README with `configs:`), via `datasets`."""
    import datasets

    for subset in subsets or [None]:
        label = f"{source}:{subset}/{split}" if subset else f"{source}/{split}"
        try:
            ds = datasets.load_dataset(source, name=subset, split=split, revision=revision)
        except Exception as e:
            raise ProblemsError(f"cannot load dataset {label}: {type(e).__name__}: {e}") from None
        for n, data in enumerate(ds):
            yield RawRow(label_name(label), n, dict(data))


def label_name(label: str) -> str:
    """Local paths are reduced to their last parts: tables get published, home folders must not."""
    if label.startswith("/"):
        p = Path(label.split(":")[0])
        rest = label[len(str(p)) :]
        return f"{p.parent.name}/{p.name}{rest}" if p.parent.name else f"{p.name}{rest}"
    return label


def iter_source(cfg: ProblemsConfig) -> tuple[Iterator[RawRow], HubSpec | None]:
    """The rows of a problem source and, for a Hub dataset we know, how to read it."""
    where = locate(cfg.source, what="problem source")
    if where.kind == "file":
        return _read_file(where.path, label_name(where.ref)), None
    if where.kind == "hub":
        spec = HUB_DATASETS.get(where.ref)
        subsets = cfg.subsets or (spec.subsets if spec else None)
        split = cfg.split or (spec.split if spec else "train")
        return _read_datasets(where.ref, subsets, split, cfg.revision), spec
    path = where.path
    if (path / "README.md").exists() or cfg.subsets:  # a dataset laid out like a Hub repo
        spec = HUB_DATASETS.get(path.name)
        split = cfg.split or (spec.split if spec else "train")
        return _read_datasets(str(path), cfg.subsets, split, cfg.revision), spec
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jsonl", ".json", ".parquet"))
    if not files:
        raise ProblemsError(f"{path}: folder has no .jsonl or .parquet files")

    def chain() -> Iterator[RawRow]:
        for f in files:
            yield from _read_file(f, label_name(str(f.resolve())))

    return chain(), None
