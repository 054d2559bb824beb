"""The tiny model: the shipped one matches the recipe in the code, and a build is deterministic."""

import hashlib
import json
from dataclasses import asdict

import pytest

from pipeline.prompts import EXPO_V1
from pipeline.tiny import BUILD_RECIPE_VERSION, TinyRecipe, build_tiny_model, synth_examples


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shipped_model_was_built_by_this_recipe(tiny_model):
    info = json.loads((tiny_model / "build_info.json").read_text())
    assert info["recipe_version"] == BUILD_RECIPE_VERSION
    assert info["recipe"] == asdict(TinyRecipe())
    # the ExPO situation on held-out synthetic problems, as measured at build time
    assert info["metrics"]["explanation_accuracy"] >= 0.7
    assert info["metrics"]["cot_accuracy"] <= 0.2


def test_shipped_model_loads_offline(tiny_model):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    assert config.model_type == "qwen2" and config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    raw = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    text = "Compute $\\frac{3}{4}+12$.\nThe correct final answer is 12.75. Please reason step by step."
    assert raw.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    size = sum(p.stat().st_size for p in tiny_model.iterdir())
    assert size < 10 * 1024 * 1024


def test_synthetic_data_is_deterministic_and_pairs_prompts():
    a = synth_examples(50, 3, EXPO_V1)
    assert a == synth_examples(50, 3, EXPO_V1)
    kinds = ["The correct final answer is" in m[0]["content"] for m, _, _ in a]
    assert kinds.count(True) == kinds.count(False) == 25
    for _messages, response, answer in a:
        assert response.endswith(f"\\boxed{{{answer}}}.")


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    recipe = TinyRecipe(n_train=400, steps=4, n_eval=2, batch_size=8)
    first = build_tiny_model(tmp_path / "a", recipe, log=lambda m: None)
    second = build_tiny_model(tmp_path / "b", recipe, log=lambda m: None)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert first["files"] == second["files"]
    assert {"model.safetensors", "tokenizer.json", "config.json", "build_info.json"} <= set(first["files"])
