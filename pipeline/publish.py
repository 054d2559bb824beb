"""Publish a run dir to the Hugging Face Hub: one commit per release, one config per table, a card.

The release is first *staged*: a folder laid out exactly as the repo will be (``{table}/*.parquet``,
``run.json``, ``report/*.png``, ``README.md``). ``--dry-run DIR`` stops there; a real publish commits
that folder's files in a single ``create_commit``, deleting files of our tables that the new
release no longer has. A commit is atomic on the Hub: a publish that dies midway leaves the repo as
it was, and the retry re-sends only what the Hub's content-addressed storage (Xet, or LFS for older
repos) does not already hold, so a large upload resumes instead of restarting.

The card is ours between markers and the user's outside them. Re-publishing replaces our block and
our configs, and keeps the user's prose, metadata and other configs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import yaml

import schemas
from pipeline.secrets import redact
from pipeline.store import RunDir, parquet_files, parquet_rows

BEGIN = "<!-- expo-data:begin (generated; edits between these markers are replaced on re-publish) -->"
END = "<!-- expo-data:end -->"
# Published tables, the default config first. expert_scores is internal (joined into problems).
TABLES = ("dpo", "dpo_expert", "dpo_self", "grpo", "sft", "problems", "problems_rejected", "samples")
DEFAULT_CONFIG = "dpo"
TAGS = ["expo", "self-explanation", "math", "reasoning", "preference", "dpo", "grpo", "synthetic", "expo-data"]
TASK_CATEGORIES = ["text-generation", "question-answering"]
CITATION = """@inproceedings{zhou2025expo,
  title     = {ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement Learning},
  author    = {Zhou and Li and Zhang and Leqi},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2025},
  note      = {arXiv:2507.02834}
}"""

DESCRIPTIONS = {
    "dpo": "ExP-DPO pairs: chosen = a verified self-explanation, rejected = an own incorrect CoT",
    "dpo_expert": "baseline pairs: chosen = the expert solution, same rejected rows as `dpo`",
    "dpo_self": "baseline pairs: chosen = an own correct CoT, same rejected rows as `dpo`",
    "grpo": "one row per problem: G rollouts, rewards, advantages, verl fields, the explanation",
    "sft": "ExP-SFT: verified explanations as prompt/completion",
    "problems": "the problems, gold answers, expert solutions and their scores",
    "problems_rejected": "input rows that failed validation, with a reason",
    "samples": "every generated text with its verdict and scores",
}


class PublishError(RuntimeError):
    """A publish that cannot proceed, with a message free of credentials."""


@dataclass
class Release:
    folder: Path
    files: list[str] = field(default_factory=list)  # paths in the repo, "/"-separated
    configs: list[str] = field(default_factory=list)
    card: str = ""

    def operations(self) -> list[str]:
        return [f"add {p}" for p in self.files]


def size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


# ----------------------------------------------------------------------------------------------
# The card


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


def _level_counts(folder: Path) -> dict[str, int]:
    files = [str(f) for f in parquet_files(folder)]
    if not files:
        return {}
    frame = pl.scan_parquet(files)
    if "level" not in frame.collect_schema().names():
        return {}
    counts = frame.group_by("level").len().collect()
    out = {("?" if lv is None else str(lv)): int(n) for lv, n in counts.iter_rows()}
    return dict(sorted(out.items()))


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def card_body(
    doc: dict[str, Any], repo_id: str, counts: dict[str, int], levels: dict[str, dict[str, int]], plots: list[str]
) -> str:
    cfg = doc.get("config", {})
    gen = cfg.get("generation", {})
    sampling = gen.get("sampling", {})
    model = doc.get("model", {})
    prompts = doc.get("prompts", {})
    name = doc.get("name", "run")
    lines = [
        f"# {name}: ExPO training data",
        "",
        "Made with expo-data for ExPO (Self-Explanation Policy Optimization): for every "
        "problem, G chain-of-thought rollouts from the plain prompt, self-explanations written by the same model "
        "given the gold answer, and verifier labels; from these, preference pairs, GRPO groups and SFT rows.",
        "",
        "## Generation",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{model.get('id')}` (revision `{model.get('revision') or 'main'}`, "
        f"fingerprint `{model.get('fingerprint')}`) |",
        f"| engine | {model.get('engine')} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in (doc.get('versions') or {}).items() if v)} |",
        f"| problems | `{Path(str(cfg.get('problems', {}).get('source', ''))).name}` |",
        f"| rollouts (G) | {gen.get('rollouts')} |",
        f"| explanations per problem | {gen.get('explanations')} |",
        f"| sampling | temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, "
        f"max_tokens {sampling.get('max_tokens')}, seed {sampling.get('seed')} |",
        f"| verifier | {doc.get('verifier', {}).get('version')} (math-verify {doc.get('verifier', {}).get('math_verify')}) |",
        f"| expo-data | {doc.get('expo_data_version')} |",
        "",
        f"Prompt template `{prompts.get('version')}` (digest `{prompts.get('digest')}`), verbatim. The CoT prompt "
        "fills `{hint}` with nothing; the self-explanation prompt fills it with the answer sentence:",
        "",
        "```text",
        str(prompts.get("user", "")),
        "```",
        "",
        "Answer sentence:",
        "",
        "```text",
        str(prompts.get("answer_sentence", "")),
        "```",
        "",
        "## Configs",
        "",
        "| config | rows | by level | what it holds |",
        "|---|---|---|---|",
    ]
    for table, rows in counts.items():
        by_level = ", ".join(f"L{k}: {v}" for k, v in levels.get(table, {}).items()) or "-"
        lines.append(f"| `{table}` | {rows} | {by_level} | {DESCRIPTIONS[table]} |")
    summary = doc.get("summary") or {}
    if summary.get("by_level"):
        lines += [
            "",
            "## Accuracy (share of samples the verifier accepts)",
            "",
            "| level | CoT | explanation |",
            "|---|---|---|",
        ]
        for level, kinds in summary["by_level"].items():
            cot, expl = kinds.get("cot", {}), kinds.get("explanation", {})
            lines.append(
                f"| {level} | {_fmt_pct(cot.get('accuracy'))} ({cot.get('samples', 0)}) "
                f"| {_fmt_pct(expl.get('accuracy'))} ({expl.get('samples', 0)}) |"
            )
        for kind, k in (summary.get("by_kind") or {}).items():
            lines.append(f"\n{kind}: {_fmt_pct(k.get('accuracy'))} of {k.get('samples')} samples")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    first = DEFAULT_CONFIG if DEFAULT_CONFIG in counts else next(iter(counts), DEFAULT_CONFIG)
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        *[f'{t} = load_dataset("{repo_id}", "{t}", split="train")' for t in counts],
        "```",
        "",
        "## Train",
        "",
        "With TRL (conversational formats: `prompt`/`chosen`/`rejected`, `prompt`/`completion`):",
        "",
        "```python",
        "from trl import DPOConfig, DPOTrainer",
        "",
        f'pairs = load_dataset("{repo_id}", "{first}", split="train")',
        'trainer = DPOTrainer(model="YOUR_MODEL", args=DPOConfig(output_dir="out", beta=0.1), train_dataset=pairs)',
        "trainer.train()",
        "```",
        "",
        "Or with expo-data's trainers (ExP-DPO, ExP-SFT, and ExP-GRPO with the explanation NLL term):",
        "",
        "```bash",
        f"expo-data train dpo  --data {repo_id} --model YOUR_MODEL --out ckpt-dpo",
        f"expo-data train grpo --data {repo_id} --model YOUR_MODEL --out ckpt-grpo",
        "```",
        "",
        "With verl: the `grpo` config is verl's RL format (`prompt` chat messages, `data_source`, `ability`, "
        "`reward_model.ground_truth`, `extra_info`); point `data.train_files` at its Parquet files "
        "(`hf download --repo-type dataset " + repo_id + " --include 'grpo/*'`).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Staging


def stage(
    run_dir: str | Path, dest: str | Path, repo_id: str, license: str = "other", existing_card: str | None = None
) -> Release:
    """Lay out the release in ``dest`` exactly as the repo will hold it. Files of our tables from an
    earlier release in ``dest`` are replaced; anything else there is left alone."""
    run = RunDir(run_dir)
    doc = run.load_run_json()
    if doc is None:
        raise PublishError(f"{run.root} has no run.json: not a run dir")
    if doc.get("status") not in (None, "complete"):
        raise PublishError(f"run {run.root} is not complete (status {doc.get('status')!r}); finish it first")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if existing_card is None and (dest / "README.md").exists():
        existing_card = (dest / "README.md").read_text(encoding="utf-8")
    release = Release(folder=dest)
    counts: dict[str, int] = {}
    levels: dict[str, dict[str, int]] = {}
    for table in TABLES:
        src = run.root / table
        if (dest / table).exists():
            shutil.rmtree(dest / table)
        files = [f for f in parquet_files(src) if parquet_rows(f) > 0] if src.exists() else []
        if not files:
            continue  # `datasets` cannot load a config with no rows: an empty table is not published
        for f in files:  # never publish a foreign or outdated table under our config names
            schemas.check(pq.read_schema(f), table, where=str(f))
        (dest / table).mkdir()
        for i, f in enumerate(files):
            name = f"{table}/train-{i:05d}-of-{len(files):05d}.parquet"
            shutil.copyfile(f, dest / name)
            release.files.append(name)
        counts[table] = sum(parquet_rows(f) for f in files)
        levels[table] = _level_counts(dest / table)
        release.configs.append(table)
    if not counts:
        raise PublishError(f"run {run.root} has no rows in any table; nothing to publish")
    shutil.copyfile(run.run_json, dest / "run.json")
    release.files.append("run.json")
    if (dest / "report").exists():
        shutil.rmtree(dest / "report")
    plots = []
    pngs = sorted(run.report.glob("*.png")) if run.report.exists() else []
    if pngs:
        (dest / "report").mkdir()
        for png in pngs:
            shutil.copyfile(png, dest / "report" / png.name)
            plots.append(f"report/{png.name}")
        release.files.extend(plots)
    default = DEFAULT_CONFIG if DEFAULT_CONFIG in counts else next(iter(counts))
    meta = {
        "license": license,
        "task_categories": TASK_CATEGORIES,
        "language": ["en"],
        "size_categories": [size_category(max(counts.values()))],
        "tags": TAGS,
        "pretty_name": f"{doc.get('name', 'run')} (ExPO data)",
        "configs": [
            {
                "config_name": t,
                "data_files": [{"split": "train", "path": f"{t}/*.parquet"}],
                **({"default": True} if t == default else {}),
            }
            for t in counts
        ],
    }
    their_meta, their_body = split_card(existing_card) if existing_card else ({}, "")
    body = card_body(doc, repo_id, counts, levels, plots)
    release.card = render_card(merge_metadata(meta, their_meta), merge_body(body, their_body))
    (dest / "README.md").write_text(release.card, encoding="utf-8")
    release.files.append("README.md")
    return release


# ----------------------------------------------------------------------------------------------
# Publishing


def _existing_card(api: Any, repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return Path(path).read_text(encoding="utf-8")


def publish(
    run_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    tag: str | None = None,
    license: str = "other",
    dry_run: str | Path | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Stage and commit a release. ``token`` None means the environment or huggingface_hub's login."""
    from pipeline.config import looks_like_hub_id

    if not looks_like_hub_id(repo_id):
        raise PublishError(f"--repo {repo_id!r} is not a Hub repo id (owner/name)")
    if dry_run is not None:
        release = stage(run_dir, dry_run, repo_id, license)
        return {
            "dry_run": str(dry_run),
            "repo": repo_id,
            "operations": release.operations(),
            "configs": release.configs,
        }
    try:
        return _publish(run_dir, repo_id, private, revision, tag, license, token, commit_message)
    except PublishError:
        raise
    except Exception as e:  # huggingface_hub's HTTP errors, connection errors, auth errors
        raise PublishError(redact(f"publishing to {repo_id} failed: {type(e).__name__}: {e}")) from None


def _publish(run_dir, repo_id, private, revision, tag, license, token, commit_message) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if private is not None:
        api.update_repo_settings(repo_id, private=private, repo_type="dataset")
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    existing = _existing_card(api, repo_id, revision)
    remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=revision))
    with tempfile.TemporaryDirectory(prefix="expo-publish-") as tmp:
        release = stage(run_dir, tmp, repo_id, license, existing_card=existing or "")
        ours = set(release.files)
        stale = sorted(p for p in remote if p not in ours and (p.split("/", 1)[0] in TABLES or p.startswith("report/")))
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(Path(tmp) / p)) for p in release.files]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        doc = json.loads((Path(tmp) / "run.json").read_text())
        message = commit_message or f"expo-data release of run {doc.get('name')} ({', '.join(release.configs)})"
        info = api.create_commit(
            repo_id, operations=ops, commit_message=message, repo_type="dataset", revision=revision
        )
    if tag:
        api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="dataset", exist_ok=False)
    return {
        "repo": repo_id,
        "revision": revision or "main",
        "commit": info.oid,
        "commit_url": info.commit_url,
        "tag": tag,
        "operations": release.operations() + [f"delete {p}" for p in stale],
        "configs": release.configs,
    }
