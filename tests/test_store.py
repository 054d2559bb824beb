import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from pipeline.errors import RunDirError
from pipeline.store import RunDir, read_table, write_parquet

from .conftest import DATA


def _problem(i):
    return {
        "problem_id": f"p{i}",
        "question": "q",
        "answer": "1",
        "expert_solution": None,
        "level": 1,
        "subject": None,
        "source": "x.jsonl",
        "source_row": i,
        "expert_nll_mean": None,
        "expert_nll_tokens": None,
        "expert_answer_logprob": None,
    }


def test_roundtrip_and_folder_read(tmp_path):
    write_parquet(schemas.from_rows("problems", [_problem(0)]), tmp_path / "t" / "a.parquet")
    write_parquet(schemas.from_rows("problems", [_problem(1)]), tmp_path / "t" / "b.parquet")
    table = read_table(tmp_path / "t", "problems")
    assert table.column("problem_id").to_pylist() == ["p0", "p1"]
    assert table.schema.equals(schemas.PROBLEMS, check_metadata=False)


def test_from_rows_rejects_missing_and_extra_keys():
    row = _problem(0)
    del row["level"]
    with pytest.raises(schemas.SchemaError, match=r"missing \['level'\]"):
        schemas.from_rows("problems", [row])
    with pytest.raises(schemas.SchemaError, match=r"unexpected \['oops'\]"):
        schemas.from_rows("problems", [{**_problem(0), "oops": 1}])


def test_readers_name_what_is_wrong(tmp_path):
    pq.write_table(pa.table({"problem_id": ["a"]}), tmp_path / "foreign.parquet")
    with pytest.raises(schemas.SchemaError, match=r"lacks column\(s\): question, answer"):
        read_table(tmp_path / "foreign.parquet", "problems")
    samples = schemas.empty("samples")
    pq.write_table(samples, tmp_path / "s.parquet")
    with pytest.raises(schemas.SchemaError, match=r"expected table 'problems' in .*s\.parquet, found table 'samples'"):
        read_table(tmp_path / "s.parquet", "problems")
    newer = schemas.PROBLEMS.with_metadata({schemas.META_TABLE: b"problems", schemas.META_VERSION: b"99"})
    pq.write_table(newer.empty_table(), tmp_path / "v.parquet")
    with pytest.raises(schemas.SchemaError, match="schema version 99") as caught:
        read_table(tmp_path / "v.parquet", "problems")
    assert "expo-data build" not in str(caught.value)  # problems are not cut again from samples
    older = schemas.GRPO.with_metadata({schemas.META_TABLE: b"grpo", schemas.META_VERSION: b"1"})
    pq.write_table(older.empty_table(), tmp_path / "g.parquet")
    with pytest.raises(schemas.SchemaError, match=r"version 1, this expo-data reads version 2 \(a training set"):
        read_table(tmp_path / "g.parquet", "grpo")
    wrong = pa.table({**{f.name: pa.array([None], f.type) for f in schemas.PROBLEMS}, "level": pa.array(["1"])})
    pq.write_table(wrong, tmp_path / "w.parquet")
    with pytest.raises(schemas.SchemaError, match=r"wrong type: level \(string, expected int8\)"):
        read_table(tmp_path / "w.parquet", "problems")
    with pytest.raises(RunDirError):
        read_table(tmp_path / "nope", "problems")


def test_failed_write_leaves_nothing(tmp_path):
    class BoomError(Exception):
        pass

    from pipeline.store import atomic_write

    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise BoomError

    with pytest.raises(BoomError):
        atomic_write(tmp_path / "x.parquet", write)
    assert list(tmp_path.iterdir()) == []


def test_shard_done_requires_the_same_key(tmp_path):
    run = RunDir(tmp_path)
    assert not run.shard_done(0, "k1")
    write_parquet(schemas.empty("samples"), run.shard(0), extra_meta={b"expo_data.shard_key": b"k1"})
    assert run.shard_done(0, "k1")
    assert not run.shard_done(0, "k2")


def test_force_new_clears_every_table_but_nothing_else(tmp_path):
    from pipeline.config import config_from_dict
    from pipeline.manifest import start_run as prepare_run_dir

    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {"path": str(DATA / "tiny-model")},
            "problems": {"source": "p.jsonl"},
        }
    )
    run = prepare_run_dir(cfg)
    for sub in ("samples", "expert_scores", "dpo", "grpo", "report", ".sft.new"):
        (run.root / sub).mkdir()
        (run.root / sub / "stale.parquet").write_bytes(b"x")
    (run.root / "notes.txt").write_text("mine")
    prepare_run_dir(cfg, force=True)
    assert sorted(p.name for p in run.root.iterdir()) == ["notes.txt", "run.json"]
