"""Cut the training sets again, with other build settings, from a run of your own or from samples
someone published (a Hub repo, or a local folder in the published layout such as a publish
dry-run). Only ``build.*`` keys can change what a rebuild makes: the samples are what they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import schemas
from pipeline import __version__
from pipeline.build import build_datasets
from pipeline.config import BuildConfig, ConfigError
from pipeline.config_files import parse_override, validate
from pipeline.errors import RunDirError
from pipeline.manifest import now, table_manifest
from pipeline.sources import locate
from pipeline.store import PROBLEMS_ROW_GROUP, RunDir, parquet_files, read_table, write_parquet
from schemas.run_doc import BuildStats, RebuiltFrom, RunDoc


def materialize(source: str | Path, out: str | Path, revision: str | None = None) -> RunDir:
    """Lay out ``problems`` and ``samples`` from a published dataset as a run dir in ``out``, so the
    builders can cut new training sets from someone else's samples. Every file is schema-checked."""
    where = locate(source, what="run dir, dataset folder or Hub repo")
    src = where.path
    if where.kind == "hub":
        from huggingface_hub import snapshot_download

        src = Path(
            snapshot_download(
                where.ref,
                repo_type="dataset",
                revision=revision,
                allow_patterns=["problems/*.parquet", "samples/*.parquet", "run.json"],
            )
        )
    run = RunDir(out)
    sample_files = parquet_files(src / "samples") if (src / "samples").exists() else []
    if not sample_files or not (src / "problems").exists():
        raise RunDirError(f"{source} has no samples/ and problems/ tables to build from")
    problems = read_table(src / "problems", "problems")
    if run.samples.exists():
        shutil.rmtree(run.samples)
    run.samples.mkdir(parents=True)
    for i, f in enumerate(sample_files):
        schemas.check(pq.read_schema(f), "samples", where=str(f))
        shutil.copyfile(f, run.shard(i))
    write_parquet(problems, run.problems, row_group_size=PROBLEMS_ROW_GROUP)
    published = RunDir(src).read_doc()
    doc = published or RunDoc(expo_data_version=__version__, name=run.root.name, status="complete", created=now())
    doc.rebuilt_from = RebuiltFrom(source=str(source), revision=revision)
    run.write_doc(doc)
    return run


def build_settings(doc: RunDoc | None, overrides: list[str]) -> BuildConfig:
    """The build settings a rebuild uses: the run's own (from its run.json, when there is one),
    with ``build.key=value`` overrides on top; other keys cannot change what a rebuild makes."""
    values: dict[str, Any] = {}
    if doc is not None and doc.config is not None:
        values = doc.config.build.model_dump()
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("build."):
            raise ConfigError(f"--set {item!r}: only build.* keys change what a rebuild makes")
        values[key.removeprefix("build.")] = value
    settings = validate(BuildConfig, values, source="build settings")
    if doc is not None and doc.config is not None:
        entries = [c.label for c in doc.config.conditionings]
        if settings.positives not in entries:
            raise ConfigError(
                f"build.positives {settings.positives!r} is not a conditioning of this run ({', '.join(entries)})"
            )
    return settings


def rebuild(run: RunDir, cfg: BuildConfig) -> BuildStats:
    """Cut the training sets again with ``cfg`` and record it in run.json."""
    stats = build_datasets(run, cfg)
    doc = run.require_doc()
    if doc.config is not None:
        doc.config.build = cfg
    doc.build = stats
    doc.tables = table_manifest(run)
    run.write_doc(doc)
    return stats


def rebuild_source(
    source: str, out: str | Path | None, overrides: list[str], revision: str | None = None
) -> tuple[RunDir, BuildStats]:
    """A run dir is rebuilt in place (``out`` None) with its own build settings; anything else (a
    published folder, a Hub repo; or a run dir given ``out``) is laid out as a run dir in ``out``
    and built with the default settings and the overrides."""
    where = locate(source, what="run dir, dataset folder or Hub repo")
    if out is None:
        if where.kind != "run_dir" or not RunDir(where.path).samples.is_dir():
            raise RunDirError(f"{source} is not a run dir; pass --out DIR to build from published data")
        run = RunDir(where.path)
        return run, rebuild(run, build_settings(run.require_doc(), overrides))
    settings = build_settings(None, overrides)
    run = materialize(source, out, revision=revision)
    return run, rebuild(run, settings)
