"""The hostile-input corpus (tests/data/hostile_inputs.jsonl): every case ends in its exact outcome,
a quarantined row with a reason or an error naming what is wrong; never a hang, never execution of
input text. `bench/hostile.py` times the whole corpus (deadlines bound it; a test asserts outcomes only)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pipeline.config import ProblemsConfig
from pipeline.problems import ProblemsError, load_problems

CORPUS = Path(__file__).parent / "data" / "hostile_inputs.jsonl"
CASES = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
MARKER = "EXPO_PWNED"


def _write_input(case: dict, folder: Path) -> Path:
    path = folder / f"input{case['ext']}"
    if "b64" in case:
        path.write_bytes(base64.b64decode(case["b64"]))
    elif "rows" in case:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [dict(r) for r in case["rows"]]
        for col, kind in (case.get("types") or {}).items():
            assert kind == "binary"
            for r in rows:
                r[col] = base64.b64decode(r[col])
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(line + "\n" for line in case["lines"]), encoding="utf-8")
    return path


def run_case(case: dict, folder: Path, pool) -> dict:
    """The outcome of one case, in the corpus's own terms."""
    if case["target"] == "verify":
        (v,) = pool.verify_groups([(case["gold"], [case["prediction"]])])[0:1][0]
        return {"verdict": v.verdict, "detail": v.detail or ""}
    cfg = ProblemsConfig(source=str(_write_input(case, folder)), **case["config"])
    try:
        loaded = load_problems(cfg, pool.check_golds)
    except ProblemsError as e:
        return {"error": str(e)}
    return {
        "accepted": len(loaded.problems),
        "rejected": [
            {"row": r["source_row"], "reason": r["reason"], "detail": r["detail"], "source": r["source"]}
            for r in loaded.rejected
        ],
        "problems": loaded.problems,
    }


def check(case: dict, outcome: dict) -> None:
    want = case["expect"]
    if case["target"] == "verify":
        assert outcome["verdict"] == want["verdict"], outcome
        assert want.get("detail", "") in outcome["detail"]
        return
    if "error" in want:
        assert "error" in outcome, f"expected an error, got {outcome}"
        assert want["error"] in outcome["error"]
        assert "input" in outcome["error"]  # the message names the file
        return
    assert "error" not in outcome, outcome.get("error")
    assert outcome["accepted"] == want["accepted"]
    assert len(outcome["rejected"]) == len(want["rejected"]), outcome["rejected"]
    for got, exp in zip(outcome["rejected"], want["rejected"], strict=True):
        assert (got["row"], got["reason"]) == (exp["row"], exp["reason"]), got
        assert exp.get("detail", "") in got["detail"], got
        assert got["source"].endswith(case["ext"])  # file and row are named
    first = outcome["problems"][0] if outcome["problems"] else {}
    for key in ("question", "level", "problem_id"):
        if key in want:
            assert first[key] == want[key]


def test_the_corpus_covers_every_kind_of_hostile_input():
    kinds = {c["kind"] for c in CASES}
    assert len(CASES) >= 40
    assert kinds >= {
        "malformed",
        "wrong-type",
        "columns",
        "nan-none",
        "duplicate",
        "enormous",
        "non-utf8",
        "sympy-bomb",
        "code",
    }
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_case(case, pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a payload that wrote files would write them here
    check(case, run_case(case, tmp_path, pool))
    assert not list(tmp_path.rglob(f"*{MARKER}*")) and not Path("/tmp", MARKER).exists()


def test_chat_templates_render_sandboxed(tiny_model):
    """A model's chat template is Jinja from the model repo, i.e. untrusted: it renders in
    transformers' sandboxed environment, so attribute tricks fail instead of reaching Python."""
    from jinja2.exceptions import SecurityError
    from transformers import AutoTokenizer

    from pipeline.prompts import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError):
        render_chat(tok, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", "x\\y"])
def test_names_that_become_paths_cannot_escape(name, tmp_path):
    from pipeline.config import ConfigError, config_from_dict
    from pipeline.online import OnlineConfig

    raw = {"name": name, "output_dir": str(tmp_path), "model": {"path": "m"}, "problems": {"source": "p"}}
    with pytest.raises(ConfigError, match="name"):
        config_from_dict(raw)
    with pytest.raises(ValueError):
        OnlineConfig(name=name, output_dir=str(tmp_path), rounds=1, generate="g.yaml")


def test_tables_are_looked_up_by_known_names_only(tmp_path):
    from pipeline.errors import SchemaError, TrainDataError
    from pipeline.store import RunDir
    from pipeline.train.data import load_table

    with pytest.raises(SchemaError, match="not a dataset table"):
        RunDir(tmp_path).table("../../etc")
    with pytest.raises(TrainDataError, match="unknown table"):
        load_table(str(tmp_path), "../problems")
