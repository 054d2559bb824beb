"""The produced datasets on the real path: `datasets`, TRL's trainers and reward, verl's reading."""

import json
import math

import pytest

import schemas

pytestmark = pytest.mark.slow


def _load(run, name):
    from datasets import load_dataset

    return load_dataset("parquet", data_files=str(run.root / name / "*.parquet"), split="train")


# grpo_questa (and hints) need conditionings the quickstart does not run: tests/test_conditionings.py.
@pytest.mark.parametrize("name", ["problems", "samples", *(n for n in schemas.DATASETS if n != "grpo_questa")])
def test_every_table_loads_with_datasets(quickstart_run, name):
    ds = _load(quickstart_run, name)
    assert ds.num_rows > 0
    assert set(schemas.schema(name).names) <= set(ds.column_names)


def test_problems_rejected_loads_with_datasets(pool, tmp_path):
    """The quickstart rejects nothing (and `datasets` cannot load an empty split), so quarantine rows
    from a bad file, written by the same writer the flow uses."""
    from datasets import load_dataset

    from pipeline.config import ProblemsConfig
    from pipeline.problems import load_problems
    from pipeline.store import write_parquet

    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"problem": "ok", "solution": "\\\\boxed{1}"}\n{"problem": "", "solution": "\\\\boxed{2}"}\nnot json\n'
    )
    rejected = load_problems(ProblemsConfig(source=str(src)), pool.check_golds).rejected
    path = write_parquet(schemas.from_rows("problems_rejected", rejected), tmp_path / "problems_rejected" / "x.parquet")
    ds = load_dataset("parquet", data_files=str(path), split="train")
    assert ds["reason"] == ["empty_question", "malformed_row"]


def test_trl_accuracy_reward_reads_every_grpo_solution(quickstart_run):
    from trl.rewards import accuracy_reward

    grpo = _load(quickstart_run, "grpo")
    solutions = grpo["solution"]
    golds = [r["ground_truth"] for r in grpo["reward_model"]]
    right = [[{"role": "assistant", "content": f"so \\boxed{{{g}}}"}] for g in golds]
    wrong = [[{"role": "assistant", "content": "so \\boxed{123456789}"}] for _ in golds]
    assert accuracy_reward(right, solutions) == [1.0] * len(golds)
    rewards = accuracy_reward(wrong, solutions)
    assert None not in rewards and set(rewards) == {0.0}


def test_trl_accuracy_reward_on_hard_gold_formats():
    """The formats that make TRL skip a row when written raw."""
    import polars as pl
    from trl.rewards import accuracy_reward

    from pipeline.builders import trl_solution

    golds = ["x^2+6x+9", "\\{1,5,9\\}", "[-3,4)", "\\text{Evelyn}", "(2,-3)", "\\frac{\\sqrt{2}}{2}", "\\$30"]
    solutions = pl.DataFrame({"gold": golds}).select(trl_solution("gold")).to_series().to_list()
    assert accuracy_reward([[{"role": "assistant", "content": g}] for g in golds], golds).count(None) > 0
    completions = [[{"role": "assistant", "content": f"\\boxed{{{g}}}"}] for g in golds]
    assert accuracy_reward(completions, solutions) == [1.0] * len(golds)


def _tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )


def _trained(trainer):
    """Train and say whether the weights moved: a trainer that consumed no loss changes nothing."""
    import torch

    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters(), strict=True))
    return result, moved


def test_dpo_trainer_consumes_the_plain_prompt_and_both_answers(quickstart_run, tiny_model, tmp_path):
    """What DPOTrainer tokenised is our row through the model's chat template: the plain CoT prompt
    (no answer sentence), then the chosen explanation and the rejected CoT as assistant turns ending
    in the end-of-turn token; its loss sees the completions only."""
    from trl import DPOConfig, DPOTrainer

    from pipeline.prompts import encode_chat

    model, tok = _tiny(tiny_model)
    rows = _load(quickstart_run, "dpo")
    args = DPOConfig(**_common(tmp_path), max_length=512, beta=0.1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)
    consumed = trainer.train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(consumed.column_names)
    for i in range(3):
        row, got = rows[i], consumed[i]
        assert got["prompt_ids"] == encode_chat(tok, row["prompt"])
        assert "The correct final answer is" not in tok.decode(got["prompt_ids"])
        assert tok.decode(got["chosen_ids"]) == row["chosen"][0]["content"] + "<|im_end|>\n"
        assert tok.decode(got["rejected_ids"]) == row["rejected"][0]["content"] + "<|im_end|>\n"
    batch = trainer.data_collator([consumed[0]])
    n, chosen = len(consumed[0]["prompt_ids"]), len(consumed[0]["chosen_ids"])
    mask = batch["completion_mask"][0].tolist()  # row 0 is the chosen sequence, padded to the longer side
    assert mask[:n] == [0] * n and mask[n : n + chosen] == [1] * chosen and set(mask[n + chosen :]) <= {0}
    result, moved = _trained(trainer)
    assert result.global_step == 2 and math.isfinite(result.training_loss) and moved


def test_sft_trainer_consumes_the_explanation_after_the_plain_prompt_with_loss_on_it_only(
    quickstart_run, tiny_model, tmp_path
):
    from trl import SFTConfig, SFTTrainer

    from pipeline.prompts import encode_chat

    model, tok = _tiny(tiny_model)
    rows = _load(quickstart_run, "sft")
    args = SFTConfig(**_common(tmp_path), max_length=512)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)
    consumed = trainer.train_dataset
    for i in range(3):
        row, got = rows[i], consumed[i]
        prompt = encode_chat(tok, row["prompt"])
        n = len(prompt)
        assert got["input_ids"][:n] == prompt
        assert tok.decode(got["input_ids"][n:]) == row["completion"][0]["content"] + "<|im_end|>\n"
        assert got["labels"][:n] == [-100] * n and got["labels"][n:] == got["input_ids"][n:]
    batch = trainer.data_collator([consumed[0], consumed[1]])
    n = len(encode_chat(tok, rows[0]["prompt"]))
    assert (batch["labels"][0][:n] == -100).all() and (
        batch["labels"][0][n : len(consumed[0]["input_ids"])] != -100
    ).all()
    result, moved = _trained(trainer)
    assert result.global_step == 2 and math.isfinite(result.training_loss) and moved


def test_grpo_trainer_trains_on_the_grpo_folder_with_trl_accuracy_reward(quickstart_run, tiny_model, tmp_path):
    from trl import GRPOConfig, GRPOTrainer
    from trl.rewards import accuracy_reward

    model, tok = _tiny(tiny_model)
    args = GRPOConfig(**_common(tmp_path), num_generations=2, max_completion_length=24, temperature=1.0)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=accuracy_reward,
        args=args,
        train_dataset=_load(quickstart_run, "grpo"),
        processing_class=tok,
    )
    result = trainer.train()
    assert result.global_step == 2


def test_grpo_trainer_trains_a_step_with_our_reward_on_the_grpo_folder(quickstart_run, tiny_model, tmp_path, pool):
    """TRL's own GRPOTrainer (not ours), the table as written, our reward function (pipeline.rewards)."""
    from trl import GRPOConfig, GRPOTrainer

    from pipeline.rewards import VerifierReward

    model, tok = _tiny(tiny_model)
    args = GRPOConfig(**{**_common(tmp_path), "max_steps": 1}, num_generations=2, max_completion_length=24)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[VerifierReward("solution", pool)],
        args=args,
        train_dataset=_load(quickstart_run, "grpo"),
        processing_class=tok,
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/expo_verifier/mean" in h]
    assert trainer.state.global_step == 1 and logged
    assert 0.0 <= logged[0]["rewards/expo_verifier/mean"] <= 1.0


def test_grpo_rows_hold_the_plain_prompt_and_the_gold(quickstart_run, tiny_model):
    """What each grpo row says, checked against the problems: the plain CoT prompt (no answer) as
    the tokenizer renders it, the gold in reward_model, the problem in extra_info. (verl's own code
    reads the table in tests/test_verl.py.)"""
    import pandas as pd
    from transformers import AutoTokenizer

    from pipeline.prompts import EXPO_V1, render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    frame = pd.concat(pd.read_parquet(p) for p in sorted((quickstart_run.root / "grpo").glob("*.parquet")))
    problems = {r["problem_id"]: r for r in _load(quickstart_run, "problems")}
    for row in frame.to_dict("records"):
        messages = [dict(m) for m in row["prompt"]]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        question = problems[row["problem_id"]]["question"]
        assert text == render_chat(tok, EXPO_V1.messages("cot", question))  # the plain prompt, no answer
        assert row["reward_model"]["style"] == "rule"
        assert row["reward_model"]["ground_truth"] == problems[row["problem_id"]]["answer"]
        assert row["data_source"] == "lighteval/MATH" and row["ability"] == "math"
        assert row["extra_info"]["problem_id"] == row["problem_id"]
        assert row["extra_info"]["source"] == problems[row["problem_id"]]["source"]
        assert len(row["rollouts"]) == 4
    json.dumps(frame.iloc[0]["extra_info"])  # plain, serialisable metadata
