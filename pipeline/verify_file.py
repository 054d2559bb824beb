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


def verify_file(
    path: str | Path,
    out: str | Path | None = None,
    gold_key: str = "gold",
    prediction_key: str = "prediction",
    workers: int = 2,
    timeout_s: float = 5.0,
) -> tuple[Path, dict[str, int]]:
    """Verify every row's prediction against its gold; write the rows back with verdict columns."""
    path = Path(path)
    rows = read_rows(path)
    for n, row in enumerate(rows, start=1):
        for key in (gold_key, prediction_key):
            if key not in row:
                raise InputFileError(f"{path}: row {n} has no {key!r} field (fields: {', '.join(map(str, row))})")
            if row[key] is not None and not isinstance(row[key], str):
                row[key] = str(row[key])
    groups: dict[str, list[int]] = {}
    for n, row in enumerate(rows):
        if row[gold_key] is not None:
            groups.setdefault(row[gold_key], []).append(n)
    verdicts: list[Verdict] = [Verdict("error", None, None, "gold is missing")] * len(rows)
    with VerifierPool(workers=workers, timeout_s=timeout_s) as pool:
        keys = list(groups)
        results = pool.verify_groups([(g, [rows[n][prediction_key] or "" for n in groups[g]]) for g in keys])
    for g, vs in zip(keys, results, strict=True):
        for n, v in zip(groups[g], vs, strict=True):
            verdicts[n] = v
    counts: dict[str, int] = {}
    for row, v in zip(rows, verdicts, strict=True):
        # Column names come from schemas.VERIFIED: verdict, extracted, parsed_answer, verdict_detail.
        row.update(zip(schemas.VERIFIED.names, (v.verdict, v.extracted, v.parsed, v.detail), strict=True))
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    target = Path(out) if out else default_output(path)
    if target.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        for f in schemas.VERIFIED:
            table = table.set_column(table.schema.get_field_index(f.name), f, table.column(f.name).cast(f.type))
        atomic_write(target, lambda tmp: pq.write_table(table, tmp))
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        atomic_write(target, write)
    return target, counts
