"""verl's own code on our ``grpo`` table; run by tests/test_verl.py in the verl environment
(``.venv-verl``: verl pins transformers below what the pipeline needs, so it cannot share ``.venv``).

    .venv-verl/bin/python tests/verl_probe.py GRPO_DIR MODEL_DIR OUT.json VERIFY_PYTHON

verl's ``RLHFDataset`` loads every Parquet file of the table (with verl's collate function in a
DataLoader, as its trainer batches), and verl's reward manager (``load_reward_manager``, the
``naive`` manager of its reward loop) scores every stored rollout, tokenized and decoded back as
verl does: once with verl's default dispatch on ``data_source``, once with our scorer through
``custom_reward_function`` (``pkg://pipeline.rewards``, ``compute_score``). The boxed gold answer
and the verified self-explanation of every row are scored by both too. Our scorer's verifier runs
under VERIFY_PYTHON (``reward_kwargs.python``: an interpreter with expo-data's pins), as it must in
verl's environment, whose ANTLR runtime makes Math-Verify read LaTeX differently; what it says
without one is recorded too. Writes the scores as JSON; the assertions are in the test.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.utils import hf_tokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn


def reward_config(custom: bool, python: str):
    kwargs = {"workers": 2, "python": python}
    scorer = {"path": "pkg://pipeline.rewards", "name": "compute_score", "reward_kwargs": kwargs}
    return OmegaConf.create(
        {
            "reward": {
                "reward_manager": {"source": "register", "name": "naive"},
                "custom_reward_function": scorer if custom else {"path": None, "name": None},
                "sandbox_fusion": None,
            }
        }
    )


def prompt_ids(tokenizer, row: dict) -> list[int]:
    """The prompt as verl's rollout tokenises a row's ``raw_prompt``."""
    prompt = tokenizer.apply_chat_template(row["raw_prompt"], add_generation_prompt=True, tokenize=True)
    return list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)  # a BatchEncoding or a list


def item(tokenizer, row: dict, text: str) -> DataProto:
    """One (prompt, response) as verl's rollout hands it to the reward manager."""
    prompt = prompt_ids(tokenizer, row)
    response = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + response])
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([prompt]),
            "responses": torch.tensor([response]),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
        },
        non_tensors={
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": np.array([row["reward_model"]], dtype=object),
            "extra_info": np.array([dict(row["extra_info"])], dtype=object),
        },
    )


def main(grpo_dir: str, model_dir: str, out: str, verify_python: str) -> None:
    tokenizer = hf_tokenizer(model_dir)
    files = sorted(str(p) for p in Path(grpo_dir).glob("*.parquet"))
    config = OmegaConf.create(
        {"prompt_key": "prompt", "max_prompt_length": 1024, "truncation": "error", "cache_dir": tempfile.mkdtemp()}
    )
    dataset = RLHFDataset(data_files=files, tokenizer=tokenizer, config=config)
    batched = sum(len(b["data_source"]) for b in DataLoader(dataset, batch_size=8, collate_fn=collate_fn))
    rows = [dataset[i] for i in range(len(dataset))]
    result = {
        "files": len(files),
        "rows": len(rows),
        "batched_rows": batched,
        "raw_prompt_roles": sorted({m["role"] for r in rows for m in r["raw_prompt"]}),
        "data_sources": sorted({r["data_source"] for r in rows}),
        "sources": sorted({r["extra_info"]["source"] for r in rows}),
        "problem_ids": [r["problem_id"] for r in rows],
        "rollout_rewards": [list(r["rollout_rewards"]) for r in rows],
        "prompt_ids": [prompt_ids(tokenizer, r) for r in rows],
    }
    for name, custom in (("default", False), ("custom", True)):
        manager = load_reward_manager(reward_config(custom, verify_python), tokenizer)

        def score(row: dict, text: str, manager=manager) -> float:
            return float(
                manager.loop.run_until_complete(manager.run_single(item(tokenizer, row, text)))["reward_score"]
            )

        result[f"{name}_rollouts"] = [[score(r, t) for t in r["rollouts"]] for r in rows]
        result[f"{name}_gold"] = [score(r, r["solution"]) for r in rows]
        # The verified self-explanations: correct by our labels, so mostly positives to agree on.
        result[f"{name}_explanations"] = [score(r, r["explanation"]) if r["explanation"] else None for r in rows]
    from pipeline.rewards import compute_score

    try:
        compute_score("lighteval/MATH", "\\boxed{25}", "25\\%")  # this environment's own interpreter
        result["without_verify_python"] = "scored"
    except Exception as e:
        result["without_verify_python"] = f"{type(e).__name__}: {e}"
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
