import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from pipeline.config import ColumnMap, ProblemsConfig
from pipeline.errors import ProblemsError, SourceNotFoundError
from pipeline.problems import load_problems
from pipeline.problems.adapters import detect_format, parse_level, subject_key
from pipeline.problems.readers import HUB_DATASETS, MATH_SUBJECTS, iter_source

from .conftest import DATA

MATH = DATA / "problems" / "math.jsonl"
N_MATH = sum(1 for line in MATH.open() if line.strip())
GSM8K = DATA / "problems" / "gsm8k.jsonl"


def load(pool, **kw):
    return load_problems(ProblemsConfig(**kw), pool.check_golds)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_shipped_math_file(pool):
    ps = load(pool, source=str(MATH))
    assert len(ps.problems) == N_MATH >= 60 and not ps.rejected
    assert {p["level"] for p in ps.problems} == {1, 2, 3, 4, 5}
    assert len({p["subject"] for p in ps.problems}) == 7
    first = ps.problems[0]
    assert first["answer"] == "68" and first["expert_solution"].endswith("$.")
    assert first["problem_id"].startswith("math-") and first["source"] == "problems/math.jsonl"
    assert all(p["expert_solution"] for p in ps.problems)


def test_shipped_gsm8k_file(pool):
    ps = load(pool, source=str(GSM8K))
    assert len(ps.problems) == 24 and not ps.rejected
    answers = [p["answer"] for p in ps.problems]
    assert "8,400" in answers
    assert all(p["level"] is None for p in ps.problems)
    assert all("<<" not in p["expert_solution"] and "####" not in p["expert_solution"] for p in ps.problems)
    assert all(p["expert_solution"].endswith(f"$\\boxed{{{p['answer']}}}$.") for p in ps.problems)


def test_filters_and_limit(pool):
    ps = load(pool, source=str(MATH), levels=[5], subjects=["Counting & Probability", "geometry"])
    assert ps.problems and all(p["level"] == 5 for p in ps.problems)
    assert {subject_key(p["subject"]) for p in ps.problems} <= {"counting_and_probability", "geometry"}
    assert ps.filtered == N_MATH - len(ps.problems)
    ps = load(pool, source=str(MATH), limit=5)
    assert len(ps.problems) == 5 and ps.beyond_limit == N_MATH - 5


def test_quarantine_reasons(pool, tmp_path):
    rows = [
        {"problem": "ok one", "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        {"problem": "   ", "solution": "\\boxed{2}", "level": "Level 1", "type": "Algebra"},
        {"problem": "no box", "solution": "the answer is 3", "level": "Level 2", "type": "Algebra"},
        {"problem": "bad gold", "solution": "\\boxed{@@}", "level": "Level 2", "type": "Algebra"},
        {"problem": "ok one", "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        {"problem": 12, "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        {"problem": ["list"], "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        "not json at all",
        {"problem": None, "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        {"problem": "nan gold", "solution": float("nan"), "level": "Level 1", "type": "Algebra"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    ps = load(pool, source=str(path))
    reasons = {r["source_row"]: r["reason"] for r in ps.rejected}
    assert reasons == {
        1: "empty_question",
        2: "missing_gold",
        3: "unparseable_gold",
        4: "duplicate_id",
        6: "bad_type",
        7: "malformed_row",
        8: "empty_question",
        9: "missing_gold",
    }
    assert [p["question"] for p in ps.problems] == ["ok one", "12"]
    assert all(r["detail"] and r["raw"] for r in ps.rejected)
    assert ps.rows_read == len(rows)
    # every row is accounted for
    assert len(ps.problems) + len(ps.rejected) + ps.filtered == ps.rows_read
    table = schemas.from_rows("problems_rejected", ps.rejected)
    assert table.num_rows == 8


def test_duplicate_given_ids(pool, tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"unique_id": "a", "problem": "q1", "solution": "\\boxed{1}"},
            {"unique_id": "a", "problem": "q2", "solution": "\\boxed{2}"},
        ],
    )
    ps = load(pool, source=str(path))
    assert [p["problem_id"] for p in ps.problems] == ["a"]
    assert ps.rejected[0]["reason"] == "duplicate_id" and "'a'" in ps.rejected[0]["detail"]


def test_missing_column_is_a_clear_error(pool, tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"problem": "q", "level": "Level 1"}])
    with pytest.raises(ProblemsError, match=r"cannot tell which columns.*columns: level, problem"):
        load(pool, source=str(path))
    with pytest.raises(ProblemsError, match=r"missing column\(s\) solution for format 'math'"):
        load(pool, source=str(path), format="math")


def test_nothing_valid_is_a_clear_error(pool, tmp_path):
    path = _jsonl(tmp_path / "e.jsonl", [{"problem": "", "solution": "\\boxed{1}"}])
    with pytest.raises(ProblemsError, match=r"no valid problems.*1 rows read, 1 rejected"):
        load(pool, source=str(path))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ProblemsError, match="has no rows"):
        load(pool, source=str(tmp_path / "empty.jsonl"))
    with pytest.raises(SourceNotFoundError, match="problem source not found"):
        load(pool, source=str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ProblemsError, match="unsupported file type"):
        load(pool, source=str(tmp_path / "x.csv"))


def test_generic_parquet_with_column_map(pool, tmp_path):
    path = tmp_path / "g.parquet"
    pq.write_table(
        pa.table(
            {
                "qid": ["x1", "x2"],
                "prompt": ["What is 2+2?", "Name it."],
                "final": [4, None],
                "difficulty": [2, 3],
                "topic": ["arith", "words"],
            }
        ),
        path,
    )
    cols = ColumnMap(id="qid", question="prompt", answer="final", level="difficulty", subject="topic")
    ps = load(pool, source=str(path), columns=cols)
    assert [(p["problem_id"], p["answer"], p["level"], p["subject"]) for p in ps.problems] == [("x1", "4", 2, "arith")]
    assert ps.rejected[0]["reason"] == "missing_gold"


def test_math500_style_rows_use_the_answer_column(pool, tmp_path):
    path = _jsonl(
        tmp_path / "m500.jsonl",
        [
            {
                "problem": "q",
                "solution": "... \\boxed{\\dfrac{1}{2}}",
                "answer": "\\frac{1}{2}",
                "subject": "Algebra",
                "level": 3,
                "unique_id": "test/algebra/1.json",
            },
        ],
    )
    [p] = load(pool, source=str(path)).problems
    assert (p["problem_id"], p["answer"], p["level"], p["subject"]) == (
        "test/algebra/1.json",
        "\\frac{1}{2}",
        3,
        "Algebra",
    )


def test_hub_ids_map_to_adapters():
    assert HUB_DATASETS["EleutherAI/hendrycks_math"].format == "math"
    assert HUB_DATASETS["EleutherAI/hendrycks_math"].subsets == MATH_SUBJECTS
    assert HUB_DATASETS["HuggingFaceH4/MATH-500"].split == "test"
    assert HUB_DATASETS["openai/gsm8k"].format == "gsm8k" and HUB_DATASETS["openai/gsm8k"].subsets == ["main"]
    assert detect_format({"problem", "solution", "level", "type"}) == "math"
    assert detect_format({"question", "answer"}) == "gsm8k"
    assert detect_format({"text"}) == "generic"


def test_hub_layout_folder_through_datasets(pool, tmp_path):
    """A local copy laid out like EleutherAI/hendrycks_math: subject configs declared in the card."""
    repo = tmp_path / "hendrycks_math"
    rows = [json.loads(line) for line in MATH.open()]
    card = ["---", "configs:"]
    for subject in ("algebra", "geometry"):
        (repo / subject).mkdir(parents=True)
        picked = [r for r in rows if subject_key(r["type"]) == subject]
        pq.write_table(pa.Table.from_pylist(picked), repo / subject / "train-00000-of-00001.parquet")
        card += [f"- config_name: {subject}", "  data_files:", "  - split: train", f"    path: {subject}/train-*"]
    (repo / "README.md").write_text("\n".join([*card, "---", ""]))
    ps = load(pool, source=str(repo), subsets=["algebra", "geometry"], format="math")
    subjects = {p["subject"] for p in ps.problems}
    assert subjects == {"Algebra", "Geometry"}
    assert ps.problems[0]["source"].endswith(":algebra/train")


def test_hub_id_goes_to_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        return [{"question": "q", "answer": "x\n#### 5"}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, spec = iter_source(ProblemsConfig(source="openai/gsm8k"))
    assert next(iter(rows)).data["question"] == "q"
    assert calls == [("openai/gsm8k", "main", "train")]
    assert spec.format == "gsm8k"


def test_parse_level():
    assert [parse_level(v) for v in ("Level 3", "level 5", 2, "4", "Level ?", None, 9, float("nan"))] == [
        3,
        5,
        2,
        4,
        None,
        None,
        None,
        None,
    ]
