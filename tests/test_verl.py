"""External trainers on our tables, with their own code: verl (0.9.1, in its own environment, see
tests/verl_probe.py) reads the ``grpo`` table and scores its stored rollouts. Our scorer is also
called from threads, as verl's reward loop calls it. (TRL's own GRPOTrainer with our reward:
tests/test_datasets.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import ROOT

VERL_PYTHON = Path(os.environ.get("EXPO_VERL_PYTHON", ROOT / ".venv-verl" / "bin" / "python"))


def run_verl_probe(table_dir: Path, model_dir: Path, out: Path) -> dict:
    """tests/verl_probe.py on one grpo-shaped table folder, in the verl environment."""
    if not VERL_PYTHON.exists():
        pytest.fail(f"no verl environment at {VERL_PYTHON}: `make setup-verl` builds it (`make test` does)")
    probe = ROOT / "tests" / "verl_probe.py"
    proc = subprocess.run(
        [str(VERL_PYTHON), str(probe), str(table_dir), str(model_dir), str(out), sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def verl_scores(quickstart_run, tiny_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("verl") / "scores.json"
    return run_verl_probe(quickstart_run.table("grpo"), tiny_model, out)


@pytest.mark.slow
def test_verl_loads_every_row_and_batches_it(verl_scores, quickstart_run):
    rows = quickstart_run.require_doc().tables["grpo"].rows
    assert verl_scores["rows"] == verl_scores["batched_rows"] == rows > 0
    assert verl_scores["raw_prompt_roles"] == ["user"]
    assert verl_scores["data_sources"] == ["lighteval/MATH"]  # build.grpo_data_source's default
    assert [s.endswith("math.jsonl") for s in verl_scores["sources"]] == [True]  # kept in extra_info


@pytest.mark.slow
def test_verl_renders_the_prompts_the_rollouts_were_generated_from(verl_scores, quickstart_run, tiny_model):
    """verl tokenises a row's prompt to exactly the ids our engine sampled its rollouts after."""
    from transformers import AutoTokenizer

    from pipeline.prompts import encode_chat
    from pipeline.store import read_table

    tok = AutoTokenizer.from_pretrained(tiny_model)
    samples = read_table(quickstart_run.samples, "samples").to_pylist()
    cots = {r["problem_id"]: r for r in samples if r["kind"] == "cot"}
    for pid, ids in zip(verl_scores["problem_ids"], verl_scores["prompt_ids"], strict=True):
        assert ids == encode_chat(tok, cots[pid]["prompt"])
        assert len(ids) == cots[pid]["prompt_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["default", "custom"])
def test_verl_rewards_equal_our_labels(verl_scores, scorer):
    """verl's default dispatch (its MATH scorer: the last box) and our scorer through
    custom_reward_function both give every stored rollout the reward our labels gave it, the boxed
    gold 1.0 on every row, and the verified explanations 1.0."""
    assert verl_scores[f"{scorer}_rollouts"] == verl_scores["rollout_rewards"]
    assert verl_scores[f"{scorer}_gold"] == [1.0] * verl_scores["rows"]
    explanations = [s for s in verl_scores[f"{scorer}_explanations"] if s is not None]
    assert explanations and set(explanations) == {1.0}


@pytest.mark.slow
def test_our_scorer_refuses_verls_antlr_runtime_instead_of_judging_otherwise(verl_scores):
    """In verl's environment (hydra-core pins ANTLR 4.9.3) Math-Verify cannot parse "25\\%": our
    verifier says so and names the way out, rather than give rewards that are not our labels."""
    said = verl_scores["without_verify_python"]
    assert said.startswith("VerifierError") and "antlr4-python3-runtime 4.9.3, not 4.13.2" in said
    assert "EXPO_VERIFY_PYTHON" in said


def test_our_verl_scorer_judges_the_same_from_threads():
    """verl calls a synchronous compute_score from executor threads, where Math-Verify's own
    signal-based timeouts raise: ours must give the same scores there as in the main thread."""
    from pipeline.rewards import compute_score

    cases = [
        ("so \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("the answer is \\boxed{3}", "4", 0.0),
        ("no box at all", "4", 0.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ("\\boxed{[1, 2)}", "[1,2)", 1.0),
        ("The final answer is 12.", "12", 1.0),  # a stated final answer, as our labels read it
    ] * 4
    main = [compute_score("any/source", text, gold) for text, gold, _ in cases]
    with ThreadPoolExecutor(4) as threads:
        threaded = list(threads.map(lambda c: compute_score("any/source", c[0], c[1], extra_info={}), cases))
    assert main == threaded == [expected for _, _, expected in cases]


def test_verifier_reward_maps_verdicts_and_reads_either_gold_column(pool):
    from pipeline.rewards import VerifierReward

    reward = VerifierReward("solution", pool)
    completions = [[{"role": "assistant", "content": t}] for t in ("\\boxed{7}", "\\boxed{8}", "none", "\\boxed{7}")]
    solutions = ["\\boxed{7}", "\\boxed{7}", "\\boxed{7}", "@@"]
    assert reward(completions, solution=solutions)[:3] == [1.0, 0.0, 0.0]
    # A gold that cannot be parsed judges nothing: None, which TRL leaves out of the reward.
    assert reward([[{"role": "assistant", "content": "\\boxed{3}"}]], solution=["@@"]) == [None]
    by_struct = VerifierReward("reward_model", pool)
    assert by_struct(["\\boxed{7}", "\\boxed{9}"], reward_model=[{"ground_truth": "7"}] * 2) == [1.0, 0.0]
    with pytest.raises(KeyError, match="'answer', which this dataset does not have"):
        VerifierReward("answer", pool)(["\\boxed{7}"], solution=["7"])
