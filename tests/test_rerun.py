"""A rerun that finds every shard done keeps the derived outputs unless something they came from changed."""

from __future__ import annotations

import pytest

from pipeline.store import RunDir, parquet_files

from .conftest import QUICKSTART

pytestmark = pytest.mark.slow

SIM = ["model.engine=sim", "problems.limit=16", "shard_size=4", "shards_per_task=2"]


def _stamps(run: RunDir) -> dict[str, int]:
    """Modification times of the derived tables and the report: what a rebuild writes again."""
    files = [f for name in ("dpo", "sft", "grpo") for f in parquet_files(run.table(name))]
    files.append(run.report / "report.md")
    return {f.relative_to(run.root).as_posix(): f.stat().st_mtime_ns for f in files}


def test_a_rerun_with_nothing_to_do_keeps_the_outputs_and_anything_changed_rebuilds_them(prefect_harness, tmp_path):
    from flows.generate import generate_flow
    from pipeline.build import build_datasets
    from pipeline.rebuild import rebuild

    settings = [f"output_dir={tmp_path / 'run'}", *SIM]
    run = RunDir(generate_flow(str(QUICKSTART), overrides=settings))
    first = run.require_doc()
    before = _stamps(run)
    assert first.outputs_key and first.rows("dpo")

    # Nothing changed: nothing is built, run.json says what this invocation did.
    generate_flow(str(QUICKSTART), overrides=settings)
    doc = run.require_doc()
    assert _stamps(run) == before
    assert doc.status == "complete" and doc.outputs_key == first.outputs_key
    assert doc.last_invocation.shards_skipped == list(range(4)) and not doc.last_invocation.shards_generated
    assert doc.build == first.build and doc.tables == first.tables and doc.summary == first.summary

    # Other build settings: rebuilt.
    generate_flow(str(QUICKSTART), overrides=[*settings, "build.dedup=true"])
    doc = run.require_doc()
    assert _stamps(run) != before and doc.config.build.dedup and doc.outputs_key != first.outputs_key

    # A rebuild with other settings forgets the key: the run's own settings rebuild on the next run.
    rebuild(run, doc.config.build.model_copy(update={"dedup": False, "pairs_per_problem": 2}))
    assert run.require_doc().outputs_key is None
    stamps = _stamps(run)
    generate_flow(str(QUICKSTART), overrides=[*settings, "build.dedup=true"])
    doc = run.require_doc()
    assert doc.outputs_key and doc.config.build.pairs_per_problem == 1 and _stamps(run) != stamps

    # A table file gone: rebuilt.
    parquet_files(run.table("sft"))[0].unlink()
    generate_flow(str(QUICKSTART), overrides=[*settings, "build.dedup=true"])
    assert parquet_files(run.table("sft")) and run.require_doc().tables == doc.tables

    # A samples shard written again (same key, new file): rebuilt from it.
    stamps = _stamps(run)
    run.shard(1).unlink()
    generate_flow(str(QUICKSTART), overrides=[*settings, "build.dedup=true"])
    doc = run.require_doc()
    assert doc.last_invocation.shards_generated == [1] and _stamps(run) != stamps

    # A build killed halfway leaves no key behind, so the next run builds.
    build_datasets(run, doc.config.build)
    assert run.require_doc().outputs_key is None
