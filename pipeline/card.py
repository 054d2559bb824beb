"""The dataset card of a release: its YAML header (configs, license, tags) and its body, rendered
from ``templates/dataset_card.md``.

The card is ours between markers and the user's outside them. Re-publishing replaces our block and
our configs, and keeps the user's prose, metadata and other configs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

import schemas
from pipeline.config import GRPO_DATA_SOURCE
from pipeline.errors import PublishError
from schemas.run_doc import ModelInfo, PromptsInfo, RunDoc, VerifierInfo

BEGIN = "<!-- expo-data:begin (generated; edits between these markers are replaced on re-publish) -->"
END = "<!-- expo-data:end -->"
DEFAULT_CONFIG = "dpo"
TAGS = ["expo", "self-explanation", "math", "reasoning", "preference", "dpo", "grpo", "synthetic", "expo-data"]
TASK_CATEGORIES = ["text-generation", "question-answering"]
TEMPLATE = Path(__file__).resolve().parent / "templates" / "dataset_card.md"


def size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card; a card without front matter has empty metadata."""
    if text.startswith("---"):
        parts = text.split("\n---", 1)
        if len(parts) == 2:
            meta = yaml.safe_load(parts[0][3:]) or {}
            body = parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
            if not isinstance(meta, dict):
                raise PublishError("the existing dataset card's YAML header is not a mapping")
            return meta, body
    return {}, text


def merge_metadata(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Ours wins for what we derive from the data (our configs, size); the user's values win for
    the rest (license, pretty name, ...); tags are united; other configs are kept."""
    merged = dict(theirs)
    for key, value in ours.items():
        if key == "configs":
            our_names = {c["config_name"] for c in value}
            kept = [c for c in theirs.get("configs") or [] if c.get("config_name") not in our_names]
            if any(c.get("default") for c in kept):
                value = [{k: v for k, v in c.items() if k != "default"} for c in value]
            merged["configs"] = value + kept
        elif key == "tags":
            merged["tags"] = list(dict.fromkeys([*(theirs.get("tags") or []), *value]))
        elif key == "size_categories" or key not in theirs:
            merged[key] = value
    return merged


def merge_body(ours: str, theirs: str) -> str:
    block = f"{BEGIN}\n{ours.strip()}\n{END}"
    if BEGIN in theirs and END in theirs:
        head, rest = theirs.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return f"{head}{block}{tail}"
    theirs = theirs.strip()
    return f"\n{block}\n" + (f"\n{theirs}\n" if theirs else "")


def render_card(meta: dict[str, Any], body: str) -> str:
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{header}---\n{body if body.startswith(chr(10)) else chr(10) + body}"


def default_config(counts: dict[str, int]) -> str:
    return DEFAULT_CONFIG if DEFAULT_CONFIG in counts else next(iter(counts), DEFAULT_CONFIG)


def card_metadata(doc: RunDoc, counts: dict[str, int], license: str, validation: Iterable[str] = ()) -> dict[str, Any]:
    """The card's YAML header; ``validation`` names the configs that have a validation split."""
    default = default_config(counts)
    with_validation = set(validation)
    return {
        "license": license,
        "task_categories": TASK_CATEGORIES,
        "language": ["en"],
        "size_categories": [size_category(max(counts.values()))],
        "tags": TAGS,
        "pretty_name": f"{doc.name} (ExPO data)",
        "configs": [
            {
                "config_name": t,
                "data_files": [
                    {"split": split, "path": f"{t}/{split}-*.parquet"}
                    for split in ("train", "validation")
                    if split == "train" or t in with_validation
                ],
                **({"default": True} if t == default else {}),
            }
            for t in counts
        ],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _sampling(doc: RunDoc, cfg: Any) -> dict[str, Any]:
    """The CoT sampling as the run applied it (run.json's effective values; older runs: the config)."""
    shown = dict.fromkeys(("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens"), "-")
    if doc.sampling and isinstance(doc.sampling.get("cot"), dict):
        shown.update(doc.sampling["cot"])
    elif cfg is not None:
        shown.update({k: v for k, v in cfg.generation.sampling.model_dump().items() if v is not None})
    shown["seed"] = cfg.generation.sampling.seed if cfg is not None else "-"
    return shown


def _conditionings(doc: RunDoc) -> dict[str, Any] | None:
    """The comparison table and each conditioning's versioned insert, when the run has more than
    ExPO's own explanation (a plain ExPO run's card stays as it was)."""
    from pipeline.comparison import table_lines

    c = doc.conditionings
    if c is None or not c.comparison or set(c.variants) <= {"answer"}:
        return None
    return {
        "table": "\n".join(table_lines(c, "all")),
        "variants": [
            {"label": label, "kind": v.get("kind"), "version": v.get("version"), "insert": v.get("insert", "")}
            for label, v in c.variants.items()
        ],
        "positives": doc.config.build.positives if doc.config else "answer",
    }


def card_body(
    doc: RunDoc, repo_id: str, counts: dict[str, int], levels: dict[str, dict[str, int]], plots: list[str]
) -> str:
    """Our block of the card: how the data was made (verbatim prompts included), what each config
    holds, accuracy by level, the plots, and how to load and train on it."""
    from jinja2 import Environment, StrictUndefined

    from pipeline.curation import funnel_section
    from pipeline.summary import summary_table_rows

    cfg = doc.config
    summary = doc.summary
    tables = [
        {
            "name": t,
            "rows": rows,
            "by_level": ", ".join(
                f"L{k}: {v}" if k != "none" else f"no level: {v}" for k, v in levels.get(t, {}).items()
            )
            or "-",
            "description": schemas.table_spec(t).description,
        }
        for t, rows in counts.items()
    ]
    accuracy = []
    if summary is not None and summary.by_level:
        accuracy = [
            {
                "level": r["level"],
                "cot": f"{_pct(r['cot_accuracy'])} ({r['cot_samples']})",
                "explanation": f"{_pct(r['explanation_accuracy'])} ({r['explanation_samples']})",
            }
            for r in summary_table_rows(summary)
            if r["level"] != "all"
        ]
    context = {
        "name": doc.name,
        "model": doc.model or ModelInfo(),
        "versions": ", ".join(f"{k} {v}" for k, v in doc.versions.items() if v),
        "problems_source": Path(cfg.problems.source).name if cfg else "-",
        "generation": cfg.generation if cfg else dict.fromkeys(("rollouts", "explanations"), "-"),
        "sampling": _sampling(doc, cfg),
        "verifier": doc.verifier or VerifierInfo(),
        "expo_data_version": doc.expo_data_version,
        "prompts": doc.prompts or PromptsInfo(),
        "tables": tables,
        "accuracy": accuracy,
        "kinds": [
            {"kind": kind, "accuracy": _pct(k.accuracy), "samples": k.samples}
            for kind, k in (summary.by_kind.items() if summary else [])
        ],
        "conditionings": _conditionings(doc),
        "funnel": "\n".join(funnel_section(doc)[2:]).strip(),
        "validation": [t for t in counts if doc.build and doc.build.validation_rows.get(t)],
        "plots": [{"stem": Path(p).stem, "path": p} for p in plots],
        "repo_id": repo_id,
        "default_config": default_config(counts),
        "grpo_data_source": doc.build.settings.grpo_data_source
        if doc.build and doc.build.settings
        else GRPO_DATA_SOURCE,
    }
    env = Environment(autoescape=False, keep_trailing_newline=True, undefined=StrictUndefined)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(**context)
