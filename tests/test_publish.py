"""Publishing: the release folder, the card, the commit (against a local recorder, never the Hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.verify import VERIFIER_VERSION
from tests.hub_recorder import HubRecorder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken0123"


def _stage(run, dest, **kw):
    from pipeline.publish import stage

    return stage(run.root, dest, "me/expo-quickstart", **kw)


def _run_rows(run, table):
    from pipeline.store import parquet_rows

    return parquet_rows(run.root / table)


def test_dry_run_folder_loads_every_config_through_the_card(quickstart_run, tmp_path):
    from datasets import load_dataset

    release = _stage(quickstart_run, tmp_path / "rel")
    assert release.configs == ["dpo", "dpo_expert", "dpo_self", "grpo", "sft", "problems", "samples"]
    for name in release.configs:
        ds = load_dataset(str(tmp_path / "rel"), name, split="train")
        assert ds.num_rows == _run_rows(quickstart_run, name), name
    default = load_dataset(str(tmp_path / "rel"), split="train")  # no name: the card's default config
    assert default.column_names == load_dataset(str(tmp_path / "rel"), "dpo", split="train").column_names
    on_disk = sorted(str(p.relative_to(tmp_path / "rel")) for p in (tmp_path / "rel").rglob("*") if p.is_file())
    assert on_disk == sorted(release.files)  # exactly what would be committed
    assert "problems_rejected" not in release.configs  # empty: `datasets` cannot load it


def test_card_loads_with_huggingface_hub_and_says_what_made_the_data(quickstart_run, tmp_path):
    from huggingface_hub import DatasetCard

    _stage(quickstart_run, tmp_path / "rel", license="mit")
    card = DatasetCard.load(tmp_path / "rel" / "README.md")
    data = card.data.to_dict()
    assert [c["config_name"] for c in data["configs"]][:2] == ["dpo", "dpo_expert"]
    assert [c for c in data["configs"] if c.get("default")] == [data["configs"][0]]
    assert data["license"] == "mit" and data["size_categories"] == ["n<1K"]
    assert "text-generation" in data["task_categories"] and "expo" in data["tags"]
    doc = json.loads((quickstart_run.root / "run.json").read_text())
    assert doc["prompts"]["user"] in card.text and doc["prompts"]["answer_sentence"] in card.text
    assert VERIFIER_VERSION in card.text and "@inproceedings{zhou2025expo" in card.text
    assert "![accuracy_by_level](report/accuracy_by_level.png)" in card.text
    assert (tmp_path / "rel" / "report" / "accuracy_by_level.png").exists()
    assert "`dpo` | 59 |" in card.text and 'load_dataset("me/expo-quickstart", "grpo", split="train")' in card.text
    # What a verl or TRL user puts in their config, as the README says it.
    assert "`data_source` is `lighteval/MATH`, which verl's default reward sends to its MATH scorer" in card.text
    assert "custom_reward_function.path=pkg://pipeline.rewards" in card.text and "VerifierReward()" in card.text
    # What the Hub will validate: the metadata round-trips through huggingface_hub's own types.
    assert DatasetCard(str(card)).data.to_dict() == data


def test_republishing_keeps_the_users_edits_and_configs(quickstart_run, tmp_path):
    import shutil

    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    rel = tmp_path / "rel"
    _stage(quickstart_run, rel)
    card = (rel / "README.md").read_text()
    card = card.replace("license: other", "license: cc-by-4.0")
    card = card.replace(
        "configs:\n", "configs:\n- config_name: mine\n  data_files:\n  - split: train\n    path: mine/*.parquet\n"
    )
    card = card.replace("## Generation", "## Generation\n\nTHIS EDIT INSIDE THE MARKERS GOES AWAY")
    card += "\n## Notes by the maintainer\n\nHand-written notes stay.\n"
    (rel / "README.md").write_text(card)
    (rel / "mine").mkdir()
    shutil.copy(next((quickstart_run.root / "sft").glob("*.parquet")), rel / "mine" / "data.parquet")
    release = _stage(quickstart_run, rel)
    merged = DatasetCard.load(rel / "README.md")
    names = [c["config_name"] for c in merged.data.to_dict()["configs"]]
    assert "mine" in names and "dpo" in names and len(names) == len(set(names))
    assert merged.data.license == "cc-by-4.0"
    assert "Hand-written notes stay." in merged.text
    assert "THIS EDIT INSIDE THE MARKERS GOES AWAY" not in merged.text
    assert merged.text.count("expo-data:begin") == 1
    assert load_dataset(str(rel), "mine", split="train").num_rows > 0
    assert "mine/data.parquet" not in release.files  # not ours: left alone, not re-added


def test_no_written_file_contains_the_token(quickstart_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    _stage(quickstart_run, tmp_path / "rel")
    for folder in (tmp_path / "rel", quickstart_run.root):
        for f in folder.rglob("*"):
            if f.is_file():
                assert FAKE_TOKEN.encode() not in f.read_bytes(), f


# ----------------------------------------------------------------------------------------------
# The commit, against a local endpoint (HF_ENDPOINT), in a fresh process as a user would run it


@pytest.fixture
def hub():
    recorder = HubRecorder().start()
    yield recorder
    recorder.stop()


def _publish_subprocess(hub, run_dir, tmp_path, **kw):
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    code = (
        "import json, sys\n"
        "from pipeline.publish import publish, PublishError\n"
        "try:\n"
        f"    print(json.dumps(publish({str(run_dir)!r}, 'me/expo-quickstart', **{kw!r})))\n"
        "except PublishError as e:\n"
        "    print('PUBLISH-ERROR', e); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_publish_makes_one_commit_with_the_release_files(quickstart_run, hub, tmp_path):
    proc = _publish_subprocess(hub, quickstart_run.root, tmp_path, private=True, tag="v1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    commits = hub.calls_to("/commit/", "POST")
    assert len(commits) == 1 and len(hub.commits) == 1
    release = _stage(quickstart_run, tmp_path / "expected")
    assert sorted(hub.commits[0]["added"]) == sorted(release.files)
    assert hub.commits[0]["deleted"] == []
    assert result["commit"] == hub.commits[0]["oid"] and result["configs"] == release.configs
    create = hub.calls_to("/api/repos/create")[0].body
    assert create["name"] == "expo-quickstart" and create["type"] == "dataset" and create["visibility"] == "private"
    assert hub.calls_to("/tag/", "POST") and hub.calls_to("/settings", "PUT")[0].body["visibility"] == "private"
    # The token went to the endpoint, as a header, and nowhere we write or print.
    assert all(c.authorization == f"Bearer {FAKE_TOKEN}" for c in hub.calls if c.method != "HEAD")
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    # run.json goes out with the publisher's folders reduced to their last part.
    published = json.loads(hub.files["run.json"])
    local = json.loads((quickstart_run.root / "run.json").read_text())
    assert published["tables"] == local["tables"] and published["summary"] == local["summary"]
    assert "/" in local["config"]["model"]["path"]  # a path of this machine, absolute or relative
    text = hub.files["run.json"].decode()
    assert str(ROOT) not in text and str(quickstart_run.root) not in text and "/tmp/" not in text
    assert published["config"]["model"]["path"] == "tiny-model"
    assert published["config"]["problems"]["source"] == "math.jsonl"


def test_republish_merges_the_card_and_removes_stale_files(quickstart_run, hub, tmp_path):
    assert _publish_subprocess(hub, quickstart_run.root, tmp_path).returncode == 0
    card = hub.files["README.md"].decode() + "\n## Maintainer notes\n\nkept across releases\n"
    hub.files["README.md"] = card.encode()
    hub.files["dpo/train-00009-of-00010.parquet"] = b"stale part of an older release"
    hub.files["mine/keep.txt"] = b"user file"
    proc = _publish_subprocess(hub, quickstart_run.root, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(hub.commits) == 2
    assert hub.commits[1]["deleted"] == ["dpo/train-00009-of-00010.parquet"]
    assert "kept across releases" in hub.files["README.md"].decode()
    assert hub.files["mine/keep.txt"] == b"user file"


def test_a_failed_commit_changes_nothing_and_its_error_carries_no_token(quickstart_run, hub, tmp_path):
    hub.fail_next_commit = f"proxy rejected request with Authorization: Bearer {FAKE_TOKEN}"
    proc = _publish_subprocess(hub, quickstart_run.root, tmp_path)
    assert proc.returncode == 3 and "PUBLISH-ERROR" in proc.stdout
    assert "proxy rejected request" in proc.stdout and "Bearer ***" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert hub.commits == [] and hub.files == {}
    proc = _publish_subprocess(hub, quickstart_run.root, tmp_path)  # the retry goes through
    assert proc.returncode == 0 and len(hub.commits) == 1


def _same_tables(a: Path, b: Path, names) -> None:
    from pipeline.store import RunDir, table_differences

    assert table_differences(RunDir(a), RunDir(b), names) == []


def test_builders_cut_the_same_sets_from_a_published_folder(quickstart_run, tmp_path):
    from pipeline.rebuild import materialize, rebuild

    _stage(quickstart_run, tmp_path / "rel")
    doc = quickstart_run.read_doc()
    run = materialize(tmp_path / "rel", tmp_path / "rebuilt")
    stats = rebuild(run, doc.config.build)
    assert stats.rows == doc.build.rows
    _same_tables(quickstart_run.root, run.root, ["dpo", "dpo_expert", "dpo_self", "grpo", "sft"])
    more = rebuild(run, doc.config.build.model_copy(update={"pairs_per_problem": 2}))
    assert more.rows["dpo"] > stats.rows["dpo"]
    assert json.loads((run.root / "run.json").read_text())["config"]["build"]["pairs_per_problem"] == 2


def test_builders_read_a_hub_repo(quickstart_run, hub, tmp_path):
    """Publish to the recorder, then rebuild from the repo id in a fresh process (HF_ENDPOINT)."""
    assert _publish_subprocess(hub, quickstart_run.root, tmp_path).returncode == 0
    out = tmp_path / "from-hub"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "expo-data"), "build", "me/expo-quickstart", "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _same_tables(quickstart_run.root, out, ["dpo", "grpo", "sft"])
    assert json.loads((out / "run.json").read_text())["rebuilt_from"]["source"] == "me/expo-quickstart"


def test_trainer_reads_a_hub_repo(quickstart_run, hub, tmp_path):
    """`expo-data train --data owner/name`: the dpo config through the card, from the endpoint."""
    assert _publish_subprocess(hub, quickstart_run.root, tmp_path).returncode == 0
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    code = (
        "from pipeline.train.config import load_train_config\n"
        "from pipeline.train.run import train\n"
        f"cfg = load_train_config(None, ['max_steps=1', 'per_device_batch_size=2'], base={{'kind': 'dpo', "
        f"'data': 'me/expo-quickstart', 'model': {str(ROOT / 'data' / 'tiny-model')!r}, "
        f"'output_dir': {str(tmp_path / 'ckpt')!r}}})\n"
        "train(cfg)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "ckpt" / "train.json").read_text())
    assert doc["data"] == {"kind": "hub", "repo": "me/expo-quickstart", "table": "dpo", "revision": None}
    assert doc["rows"] == _run_rows(quickstart_run, "dpo") and doc["global_step"] == 1


def test_publish_refuses_a_foreign_table_under_a_config_name(quickstart_run, tmp_path):
    import shutil

    from schemas import SchemaError

    fake = tmp_path / "run"
    shutil.copytree(quickstart_run.root, fake)
    target = next((fake / "dpo").glob("*.parquet"))
    shutil.copy(next((fake / "sft").glob("*.parquet")), target)
    with pytest.raises(SchemaError, match=r"expected table 'dpo' in .*, found table 'sft'"):
        _stage(type(quickstart_run)(fake), tmp_path / "rel")
