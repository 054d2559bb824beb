"""`expo-data verify FILE`: the verifier as a standalone tool for a user's own outputs.

Rows of a JSONL or Parquet file with a gold answer and a prediction come back with the verdict
columns of ``schemas.VERIFIED``; the user's own columns stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import schemas
from pipeline.errors import InputFileError
from pipeline.store import atomic_write
from pipeline.text import storable, storable_tree
from pipeline.verify import Verdict, VerifierPool


def read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InputFileError(f"{path}:{n}: not a JSON object ({e})") from None
                if not isinstance(row, dict):
                    raise InputFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    raise InputFileError(f"{path}: unsupported file type {suffix!r} (use .jsonl or .parquet)")


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.verified{path.suffix}")


def _row_text(row: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    """(text to verify, why this row cannot be verified): numbers are text, a mapping or a list is
    not, and text that cannot be stored is this row's error, never the file's."""
    value = row[key]
    if value is None or isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        return None, f"{key} is a {type(value).__name__}, expected text"
    if text is not None:
        _clean, problem = storable(text)
        if problem is not None:
            return None, f"{key}: {problem}"
    return text, None


def _write(rows: list[dict[str, Any]], target: Path) -> None:
    """JSONL keeps every value as it was (a line that UTF-8 cannot hold is written with JSON escapes,
    which read back the same); Parquet, whose strings are UTF-8, stores U+FFFD where it must."""
    if target.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(_one_type_per_column([storable_tree(r) for r in rows]))
        for f in schemas.VERIFIED:
            table = table.set_column(table.schema.get_field_index(f.name), f, table.column(f.name).cast(f.type))
        atomic_write(target, lambda tmp: pq.write_table(table, tmp))
        return
    lines = []
    for r in rows:
        line = json.dumps(r, ensure_ascii=False, default=str)
        lines.append(line if storable(line)[1] is None else json.dumps(r, ensure_ascii=True, default=str))
    text = "".join(line + "\n" for line in lines)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(target, write)


def _one_type_per_column(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as one Parquet table: every column any row has, and one type per column (where a JSONL
    column mixes text with mappings or lists, the very rows that got an error verdict, those values
    are stored as their JSON text)."""
    kinds: dict[str, set[type]] = {}
    for r in rows:
        for k, v in r.items():
            if v is not None:
                kinds.setdefault(k, set()).add(
                    dict if isinstance(v, dict) else list if isinstance(v, list) else type(v)
                )
    mixed = {k for k, t in kinds.items() if len(t) > 1 and t & {dict, list}}
    names = list(dict.fromkeys(k for r in rows for k in r))  # every column, also one only later rows have
    return [
        {k: json.dumps(r.get(k)) if k in mixed and isinstance(r.get(k), (dict, list)) else r.get(k) for k in names}
        for r in rows
    ]


def verify_file(
    path: str | Path,
    out: str | Path | None = None,
    gold_key: str = "gold",
    prediction_key: str = "prediction",
    workers: int = 2,
    timeout_s: float = 5.0,
    extraction: str = "boxed_or_final",
) -> tuple[Path, dict[str, int]]:
    """Verify every row's prediction against its gold; write the rows back with verdict columns.
    A row that cannot be verified (a gold or prediction that is not text, or holds characters that
    cannot be stored) gets an ``error`` verdict naming why; every other row is verified."""
    path = Path(path)
    rows = read_rows(path)
    verdicts: list[Verdict | None] = [None] * len(rows)
    groups: dict[str, list[tuple[int, str]]] = {}
    for n, row in enumerate(rows):
        for key in (gold_key, prediction_key):
            if key not in row:
                raise InputFileError(f"{path}: row {n + 1} has no {key!r} field (fields: {', '.join(map(str, row))})")
        gold, gold_problem = _row_text(row, gold_key)
        prediction, prediction_problem = _row_text(row, prediction_key)
        if gold_problem or prediction_problem:
            verdicts[n] = Verdict("error", None, None, gold_problem or prediction_problem)
        elif gold is None:
            verdicts[n] = Verdict("error", None, None, "gold is missing")
        else:
            groups.setdefault(gold, []).append((n, prediction or ""))
    with VerifierPool(workers=workers, timeout_s=timeout_s, extraction=extraction) as pool:
        keys = list(groups)
        results = pool.verify_groups([(g, [text for _, text in groups[g]]) for g in keys])
    for g, vs in zip(keys, results, strict=True):
        for (n, _), v in zip(groups[g], vs, strict=True):
            verdicts[n] = v
    counts: dict[str, int] = {}
    for row, v in zip(rows, verdicts, strict=True):
        assert v is not None
        values = (v.verdict, v.extracted, v.parsed, v.detail, v.by, v.alt_verdict)
        row.update(zip(schemas.VERIFIED.names, values, strict=True))
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    target = Path(out) if out else default_output(path)
    _write(rows, target)
    return target, counts
