"""Arrow schemas of every table expo-data writes: the one place a column is defined.

Writers build tables with :func:`schema`; readers call :func:`check` so a table written by another
version, or a folder of something else, fails with a message naming the table and the columns, not a
KeyError deep inside a trainer. Each schema carries its table name and version in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pipeline.errors import SchemaError
from schemas.tables import (
    DPO,
    DPO_EXPERT,
    DPO_SELF,
    EXPERT_SCORES,
    GRPO,
    GRPO_QUESTA,
    HINTS,
    MESSAGE,
    MESSAGES,
    META_TABLE,
    META_VERSION,
    PROBLEMS,
    PROBLEMS_REJECTED,
    SAMPLES,
    SAMPLES_PENDING,
    SFT,
    UPGRADES,
    VERIFIED,
)


@dataclass(frozen=True)
class TableSpec:
    """A table of a run dir: its schema, its folder (named like the table), whether it is one file or
    a folder of shards, whether it stays in a finished run (``recorded`` in run.json) and is
    ``published``."""

    schema: pa.Schema
    description: str
    single_file: bool = False
    recorded: bool = True
    published: bool = True
    dataset: bool = False

    @property
    def name(self) -> str:
        return self.schema.metadata[META_TABLE].decode()


_SPECS = (
    TableSpec(PROBLEMS, "the problems, gold answers, expert solutions and their scores", single_file=True),
    TableSpec(PROBLEMS_REJECTED, "input rows that failed validation, with a reason", single_file=True),
    TableSpec(SAMPLES, "every generated text with its verdict and scores"),
    TableSpec(
        SAMPLES_PENDING,
        "a shard between its engine stage and its verifier stage",
        recorded=False,
        published=False,
    ),
    TableSpec(EXPERT_SCORES, "the two scores of each expert solution (joined into problems)", published=False),
    TableSpec(
        DPO, "ExP-DPO pairs: chosen = a verified self-explanation, rejected = an own incorrect CoT", dataset=True
    ),
    TableSpec(DPO_EXPERT, "baseline pairs: chosen = the expert solution, same rejected rows as `dpo`", dataset=True),
    TableSpec(DPO_SELF, "baseline pairs: chosen = an own correct CoT, same rejected rows as `dpo`", dataset=True),
    TableSpec(GRPO, "one row per problem: G rollouts, rewards, advantages, verl fields, the explanation", dataset=True),
    TableSpec(SFT, "ExP-SFT: verified explanations as prompt/completion", dataset=True),
    TableSpec(
        GRPO_QUESTA,
        "QuestA: grpo rows whose prompt shows part of the expert solution, one per problem and fraction",
        dataset=True,
    ),
    TableSpec(HINTS, "NuRL's abstract hints, written by the model from question and gold, leak-checked"),
)
REGISTRY: dict[str, TableSpec] = {spec.name: spec for spec in _SPECS}
TABLES: dict[str, pa.Schema] = {spec.name: spec.schema for spec in _SPECS}
"""Every table a run dir holds, in run-dir order: the one list the run dir, the manifest, the CLI,
publishing and the report walk."""

DATASETS = tuple(s.name for s in _SPECS if s.dataset)
"""The training sets, each its own folder in the run dir and its own config on the Hub."""
PUBLISHED = (*DATASETS, *(s.name for s in _SPECS if s.published and not s.dataset))
"""Published tables, the default config (``dpo``) first."""
RECORDED = tuple(s for s in _SPECS if s.recorded)
SHOWN = tuple(s.name for s in _SPECS if s.published)
"""The tables a person looks at (inspect, the end of a run), in run-dir order."""

VERDICTS = ("correct", "incorrect", "no_answer", "timeout", "error")
KINDS = ("cot", "explanation")


def table_spec(name: str) -> TableSpec:
    """The registered table of this name; any other name (a path, a typo) is refused."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SchemaError(f"unknown table {name!r}; known: {', '.join(REGISTRY)}") from None


def schema(name: str) -> pa.Schema:
    return table_spec(name).schema


def version(s: pa.Schema) -> int | None:
    meta = s.metadata or {}
    raw = meta.get(META_VERSION)
    return int(raw) if raw is not None else None


def check(actual: pa.Schema, name: str, where: str = "") -> None:
    """Fail with a readable message unless ``actual`` carries table ``name``'s columns and version."""
    expected = schema(name)
    loc = f" in {where}" if where else ""
    meta = actual.metadata or {}
    table = meta.get(META_TABLE, b"").decode() or None
    if table is not None and table != name:
        raise SchemaError(f"expected table {name!r}{loc}, found table {table!r}")
    got_version = version(actual)
    want_version = version(expected)
    added = UPGRADES.get(name, {}).get(got_version or -1, {})
    if added:
        expected = pa.schema([f for f in expected if f.name not in added], metadata=expected.metadata)
    elif got_version is not None and got_version != want_version:
        again = (
            " (a training set: `expo-data build RUN_DIR` cuts it again from the samples)" if name in DATASETS else ""
        )
        raise SchemaError(
            f"table {name!r}{loc} has schema version {got_version}, this expo-data reads version {want_version}{again}"
        )
    missing = [f.name for f in expected if f.name not in actual.names]
    if missing:
        raise SchemaError(f"table {name!r}{loc} lacks column(s): {', '.join(missing)}")
    wrong = [
        f"{f.name} ({actual.field(f.name).type}, expected {f.type})"
        for f in expected
        if not actual.field(f.name).type.equals(f.type)
    ]
    if wrong:
        raise SchemaError(f"table {name!r}{loc} has column(s) of the wrong type: {'; '.join(wrong)}")


def upgrades(actual: pa.Schema, name: str) -> dict[str, pl.Expr]:
    """The columns a reader must add to a table of this (older) schema; empty when current."""
    return UPGRADES.get(name, {}).get(version(actual) or -1, {})


def empty(name: str) -> pa.Table:
    return schema(name).empty_table()


def from_rows(name: str, rows: list[dict]) -> pa.Table:
    """Build a table from row dicts; a missing or extra key is an error, not a silent null."""
    s = schema(name)
    names = set(s.names)
    for i, row in enumerate(rows):
        keys = set(row)
        if keys != names:
            extra, missing = sorted(keys - names), sorted(names - keys)
            raise SchemaError(f"row {i} for table {name!r}: missing {missing}, unexpected {extra}")
    return pa.Table.from_pylist(rows, schema=s)


__all__ = [
    "DATASETS",
    "DPO",
    "DPO_EXPERT",
    "DPO_SELF",
    "EXPERT_SCORES",
    "GRPO",
    "GRPO_QUESTA",
    "HINTS",
    "KINDS",
    "MESSAGE",
    "MESSAGES",
    "META_TABLE",
    "META_VERSION",
    "PROBLEMS",
    "PROBLEMS_REJECTED",
    "PUBLISHED",
    "RECORDED",
    "REGISTRY",
    "SAMPLES",
    "SAMPLES_PENDING",
    "SFT",
    "SHOWN",
    "TABLES",
    "UPGRADES",
    "VERDICTS",
    "VERIFIED",
    "TableSpec",
    "check",
    "empty",
    "from_rows",
    "schema",
    "table_spec",
    "upgrades",
    "version",
]
