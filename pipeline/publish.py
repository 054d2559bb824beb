"""Publish a run dir to the Hugging Face Hub: one commit per release, one config per table, a card.

The release is first *staged*: a folder laid out exactly as the repo will be (``{table}/*.parquet``,
``run.json``, ``report/*.png``, ``README.md``). ``--dry-run DIR`` stops there; a real publish commits
that folder's files in a single ``create_commit``, deleting files of our tables that the new
release no longer has. A commit is atomic on the Hub: a publish that dies midway leaves the repo as
it was, and the retry re-sends only what the Hub's content-addressed storage (Xet, or LFS for older
repos) does not already hold, so a large upload resumes instead of restarting.

The staged run.json names no folder of the publisher's machine: local paths are reduced to their
last part, as the tables already record them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import schemas
from pipeline.card import card_body, card_metadata, merge_body, merge_metadata, render_card, split_card
from pipeline.errors import PublishError, UserError
from pipeline.secrets import redact
from pipeline.sources import looks_like_hub_id
from pipeline.store import VALIDATION, RunDir, parquet_files, parquet_rows, rows_by_level, write_json
from schemas.run_doc import RunDoc

DEFAULT_LICENSE = "other"  # the terms of the problems and the model apply until the publisher says


@dataclass
class Release:
    folder: Path
    files: list[str] = field(default_factory=list)  # paths in the repo, "/"-separated
    configs: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # configs that have a validation split
    card: str = ""
    name: str = ""  # the run's name

    def operations(self) -> list[str]:
        return [f"add {p}" for p in self.files]


# ----------------------------------------------------------------------------------------------
# Staging


def publishable_doc(doc: RunDoc) -> dict[str, Any]:
    """run.json as it is published: local paths (the config's, a rebuild's source) reduced to their
    last part, so a public repo shows no folder of the publisher's machine."""
    from pipeline.config import PATH_FIELDS
    from pipeline.config_files import get_dotted, set_dotted

    data = doc.to_json()

    def local(value: Any) -> bool:
        return isinstance(value, str) and (os.path.isabs(value) or value.startswith(("./", "../", "~")))

    for dotted in PATH_FIELDS:
        value = get_dotted(data.get("config") or {}, dotted.removesuffix("[]"))
        if local(value):
            set_dotted(data["config"], dotted, Path(value).name)
        elif dotted.endswith("[]") and isinstance(value, list):  # benchmark sources: {source: ...} each
            for item in value:
                if isinstance(item, dict) and local(item.get("source")):
                    item["source"] = Path(item["source"]).name
    rebuilt = data.get("rebuilt_from") or {}
    if local(rebuilt.get("source")):
        rebuilt["source"] = Path(rebuilt["source"]).name
    return data


def _stage_tables(run: RunDir, dest: Path, release: Release) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Copy every non-empty published table as ``{table}/train-*.parquet``, and a training set's
    validation split as ``{table}/validation-*.parquet``; returns the train split's rows and rows by
    level per table. `datasets` cannot load a config with no rows, so an empty table is left out."""
    counts: dict[str, int] = {}
    levels: dict[str, dict[str, int]] = {}
    for table in schemas.PUBLISHED:
        src = run.location(table)
        if (dest / table).exists():
            shutil.rmtree(dest / table)
        splits = {"train": src, VALIDATION: src / VALIDATION}
        files = {
            split: [f for f in parquet_files(folder) if parquet_rows(f) > 0] if folder.exists() else []
            for split, folder in splits.items()
        }
        if not files["train"]:
            continue
        (dest / table).mkdir()
        for split, found in files.items():
            for f in found:  # never publish a foreign or outdated table under our config names
                schemas.check(pq.read_schema(f), table, where=str(f))
            for i, f in enumerate(found):
                name = f"{table}/{split}-{i:05d}-of-{len(found):05d}.parquet"
                shutil.copyfile(f, dest / name)
                release.files.append(name)
        counts[table] = sum(parquet_rows(f) for f in files["train"])
        levels[table] = rows_by_level(src)
        release.configs.append(table)
        if files[VALIDATION]:
            release.validation.append(table)
    return counts, levels


def _stage_plots(run: RunDir, dest: Path, release: Release) -> list[str]:
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
    return plots


def stage(
    run_dir: str | Path,
    dest: str | Path,
    repo_id: str,
    license: str | None = None,
    existing_card: str | None = None,
) -> Release:
    """Lay out the release in ``dest`` exactly as the repo will hold it. Files of our tables from an
    earlier release in ``dest`` are replaced; anything else there is left alone. ``license`` None
    takes the run config's ``publish.license``, else ``other``."""
    run = RunDir(run_dir)
    doc = run.require_doc()
    if doc.status != "complete":
        raise UserError(f"run {run.root} is not complete (status {doc.status!r}); finish it first")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if existing_card is None and (dest / "README.md").exists():
        existing_card = (dest / "README.md").read_text(encoding="utf-8")
    release = Release(folder=dest, name=doc.name)
    counts, levels = _stage_tables(run, dest, release)
    if not counts:
        raise UserError(f"run {run.root} has no rows in any table; nothing to publish")
    write_json(publishable_doc(doc), dest / "run.json")
    release.files.append("run.json")
    plots = _stage_plots(run, dest, release)
    their_meta, their_body = split_card(existing_card) if existing_card else ({}, "")
    meta = card_metadata(doc, counts, license or default_license(doc), release.validation)
    body = card_body(doc, repo_id, counts, levels, plots)
    release.card = render_card(merge_metadata(meta, their_meta), merge_body(body, their_body))
    (dest / "README.md").write_text(release.card, encoding="utf-8")
    release.files.append("README.md")
    return release


def default_license(doc: RunDoc) -> str:
    """The run config's ``publish.license`` when it has a publish block, else ``other``."""
    if doc.config is not None and doc.config.publish is not None:
        return doc.config.publish.license
    return DEFAULT_LICENSE


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
    license: str | None = None,
    dry_run: str | Path | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Stage and commit a release. ``token`` None means the environment or huggingface_hub's login."""
    if not looks_like_hub_id(repo_id):
        raise UserError(f"--repo {repo_id!r} is not a Hub repo id (owner/name)")
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
    except (PublishError, UserError):
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
        ours_prefix = (*schemas.PUBLISHED, "report")
        stale = sorted(p for p in remote if p not in ours and p.split("/", 1)[0] in ours_prefix)
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(Path(tmp) / p)) for p in release.files]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        message = commit_message or f"expo-data release of run {release.name} ({', '.join(release.configs)})"
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
