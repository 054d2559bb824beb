"""run.json: one typed document with one owner (RunDir), readable across versions and moves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import config_from_dict
from pipeline.errors import RunDirError
from pipeline.store import RunDir
from schemas.run_doc import RunDoc

DATA = Path(__file__).resolve().parent / "data"
OLD = DATA / "run-json-0.1.0.json"  # written by expo-data 0.1.0 before run.json had a schema


def _doc(cfg=None, **kw):
    return RunDoc(expo_data_version="t", name="r", status="complete", created="2026-01-01", config=cfg, **kw)


def test_a_run_json_written_before_the_schema_loads_typed(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    shutil.copy(OLD, run.run_json)
    doc = run.read_doc()
    assert doc.config.generation.rollouts == 4 and doc.config.model.path == "/home/ada/expo-data/data/tiny-model"
    assert doc.summary.by_kind["cot"].samples == 296 and doc.summary.by_level["1"]["explanation"].samples == 36
    assert doc.build.settings.best_explanation == "lowest_nll" and doc.build.problems.paired == 59
    assert doc.rows("dpo") == 59 and doc.rows("report") is None
    assert doc.shards["0"].stages["verify"][0] >= doc.shards["0"].stages["score"][1]
    assert doc.timings.shard_stages.shards == 5 and doc.model.per_request_seeds is True
    # Rewritten by the owner and read again: the same document.
    run.write_doc(doc)
    assert run.read_doc() == doc


def test_a_document_missing_what_every_run_json_has_fails_naming_it(tmp_path):
    run = RunDir(tmp_path)
    run.run_json.write_text(json.dumps({"name": "r", "config": {"output_dir": "."}}))
    with pytest.raises(RunDirError, match=r"missing 'expo_data_version'.*missing 'status'.*missing 'created'"):
        run.read_doc()
    run.run_json.write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        run.read_doc()
    with pytest.raises(RunDirError, match=r"has no run\.json"):
        RunDir(tmp_path / "empty").require_doc()


def test_paths_are_recorded_relative_to_the_run_dir_where_they_share_a_folder(tmp_path):
    home = tmp_path / "project"
    cfg = config_from_dict(
        {
            "output_dir": str(home / "runs" / "r"),
            "model": {"path": str(home / "models" / "m #1")},
            "problems": {"source": str(home / "runs" / "r" / "in" / "p.jsonl")},
        }
    )
    run = RunDir(cfg.output_dir)
    run.root.mkdir(parents=True)
    run.write_doc(_doc(cfg))
    raw = json.loads(run.run_json.read_text())["config"]
    assert raw["output_dir"] == "."
    assert raw["model"]["path"] == "../../models/m #1"
    assert raw["problems"]["source"] == "./in/p.jsonl"
    assert run.read_doc().config == cfg  # absolute again in memory
    # Moved together with its inputs, the run dir still names them.
    moved = tmp_path / "elsewhere"
    shutil.copytree(home, moved)
    again = RunDir(moved / "runs" / "r").read_doc().config
    assert again.model.path == str(moved / "models" / "m #1") and again.output_dir == str(moved / "runs" / "r")


def test_hub_ids_and_paths_outside_the_run_dirs_folders_stay_as_they_are(tmp_path):
    cfg = config_from_dict(
        {"output_dir": str(tmp_path / "r"), "model": {"path": "Qwen/Qwen2.5-3B-Instruct"}, "problems": {"source": "/p"}}
    )
    run = RunDir(cfg.output_dir)
    run.root.mkdir()
    run.write_doc(_doc(cfg))
    raw = json.loads(run.run_json.read_text())["config"]
    assert raw["model"]["path"] == "Qwen/Qwen2.5-3B-Instruct" and raw["problems"]["source"] == "/p"
    assert run.read_doc().config == cfg


def test_keys_a_newer_version_wrote_survive_a_rewrite(tmp_path):
    run = RunDir(tmp_path)
    data = _doc().to_json()
    data["future_section"] = {"x": 1}
    data["build"] = {"rows": {"dpo": 1}, "future_count": 7}
    run.run_json.write_text(json.dumps(data))
    run.write_doc(run.read_doc())
    again = json.loads(run.run_json.read_text())
    assert again["future_section"] == {"x": 1} and again["build"]["future_count"] == 7
    assert "rebuilt_from" not in again  # sections a run does not have are left out
