"""A look into a run dir's tables: row counts, a few rows each, verdict counts of the samples.

The walk is library code so that any front end (the CLI's ``inspect``, a notebook) shows the same
thing; the CLI only draws it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemas
from pipeline.errors import ExpoDataError
from pipeline.store import RunDir, read_table


@dataclass
class TablePeek:
    name: str
    present: bool = True
    error: str | None = None
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    shown: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (row number, row)
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)  # samples: (kind, verdict) -> n


def peek_table(run: RunDir, name: str, rows: int) -> TablePeek:
    """Counts and the first ``rows`` rows of one table; for samples, ``rows`` of each kind, so CoT
    rollouts and explanations show side by side. An unreadable table is reported, not raised."""
    path = run.location(name)
    if not path.exists():
        return TablePeek(name, present=False)
    try:
        table = read_table(path, name)
    except (ExpoDataError, OSError, ValueError) as e:
        return TablePeek(name, error=str(e))
    peek = TablePeek(name, rows=table.num_rows, columns=table.column_names)
    if name == "samples" and table.num_rows:
        kinds = table.column("kind").to_pylist()
        peek.verdicts = dict(sorted(Counter(zip(kinds, table.column("verdict").to_pylist(), strict=True)).items()))
        picked = [i for kind in schemas.KINDS for i in [j for j, k in enumerate(kinds) if k == kind][:rows]]
        peek.shown = [(i, table.slice(i, 1).to_pylist()[0]) for i in picked]
    else:
        peek.shown = list(enumerate(table.slice(0, rows).to_pylist()))
    return peek


def peek_run(run: RunDir, rows: int = 3) -> list[TablePeek]:
    """Every table a person looks at, in run-dir order."""
    return [peek_table(run, name, rows) for name in schemas.SHOWN]


@dataclass
class RenderedPrompt:
    kind: str
    sample_id: str
    text: str  # the exact text the model was conditioned on, system turn included


def render_prompts(doc: Any, peeks: list[TablePeek]) -> tuple[list[RenderedPrompt], str | None]:
    """The shown samples' prompts as the model saw them, through its chat template (which may add a
    system turn the ``prompt`` column does not hold); with a note instead when the model's tokenizer
    cannot be loaded here."""
    from pipeline.prompts import load_tokenizer, render_chat

    samples = next((p for p in peeks if p.name == "samples" and p.shown), None)
    if samples is None or doc is None or doc.config is None:
        return [], None
    model = doc.config.model
    try:
        tokenizer = load_tokenizer(model.path, model.revision, model.trust_remote_code)
    except (OSError, ValueError) as e:
        return [], f"the prompts as rendered need the model's tokenizer ({model.path}): {e}"
    shown, kinds = [], set()
    for _, row in samples.shown:
        if row["kind"] not in kinds:
            kinds.add(row["kind"])
            try:
                text = render_chat(tokenizer, row["prompt"])
            except ExpoDataError as e:
                return [], str(e)
            shown.append(RenderedPrompt(row["kind"], row["sample_id"], text))
    return shown, None
