"""One sampling contract: the model's generation_config.json applies on both engines or on neither."""

import json
import shutil

import pytest

from pipeline.completions import build_requests
from pipeline.config import ModelConfig, SamplingConfig, config_from_dict
from pipeline.engines import Request, Sampling
from pipeline.errors import ConfigError
from pipeline.prompts import EXPO_V1
from pipeline.sampling import describe, model_generation_config, resolve

QWEN_INSTRUCT = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def test_ignore_takes_nothing_from_the_model_and_apply_fills_only_what_the_config_leaves_unset():
    assert resolve(SamplingConfig(), QWEN_INSTRUCT) == NEUTRAL
    assert resolve(SamplingConfig(temperature=0.6), QWEN_INSTRUCT) == {**NEUTRAL, "temperature": 0.6}
    applied = resolve(SamplingConfig(model_defaults="apply"), QWEN_INSTRUCT)
    assert applied == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.05}
    mine = resolve(SamplingConfig(model_defaults="apply", temperature=1.0, top_k=0), QWEN_INSTRUCT)
    assert mine == {**applied, "temperature": 1.0, "top_k": 0}
    greedy = resolve(SamplingConfig(model_defaults="apply"), {"do_sample": False, "temperature": 0.7, "top_p": 0.9})
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 0.9
    mine = resolve(SamplingConfig(model_defaults="apply", temperature=0.5), {"do_sample": False, "temperature": 0.7})
    assert mine["temperature"] == 0.5


def test_apply_refuses_what_the_engines_cannot_apply_alike():
    beams = {**QWEN_INSTRUCT, "num_beams": 4, "no_repeat_ngram_size": 3}
    with pytest.raises(ConfigError, match=r"no_repeat_ngram_size=3, num_beams=4.*model_defaults: ignore"):
        resolve(SamplingConfig(model_defaults="apply"), beams)
    assert resolve(SamplingConfig(), beams) == NEUTRAL  # ignored, so nothing to refuse
    # values that equal transformers' own defaults ask for nothing
    assert resolve(SamplingConfig(model_defaults="apply"), {"num_beams": 1, "max_new_tokens": 9}) == NEUTRAL


@pytest.fixture(scope="module")
def penalised_model(tiny_model, tmp_path_factory):
    """The tiny model with a generation config that a silent engine default would apply."""
    folder = tmp_path_factory.mktemp("penalised") / "tiny-penalised"
    shutil.copytree(tiny_model, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(repetition_penalty=1.8, top_k=3, temperature=0.6)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


def _config(model, mode, **sampling):
    return config_from_dict(
        {
            "name": "s",
            "output_dir": "out",
            "model": {"path": str(model), "engine": "hf"},
            "problems": {"source": "x.jsonl"},
            "generation": {"rollouts": 2, "explanations": 1, "sampling": {"model_defaults": mode, **sampling}},
        }
    )


PROBLEMS = [{"problem_id": "p0", "question": "What is $23+45$?", "answer": "68"}]


@pytest.mark.parametrize("mode", ["ignore", "apply"])
def test_both_engines_hand_their_library_the_same_values(mode, penalised_model, hf_engine, vllm_engine):
    cfg = _config(penalised_model, mode, max_tokens=24)
    requests, _ = build_requests(PROBLEMS, cfg, hf_engine, EXPO_V1)
    expected = {**NEUTRAL, **({"temperature": 0.6, "top_k": 3, "repetition_penalty": 1.8} if mode == "apply" else {})}
    for r in requests:
        assert r.sampling.params == expected
        hf = hf_engine.generation_kwargs(r.sampling)
        vl = vllm_engine._params(r)
        assert hf["do_sample"] and vl.n == r.sampling.n and vl.max_tokens == 24
        assert (hf["temperature"], hf["top_p"], hf["top_k"], hf["repetition_penalty"]) == (
            vl.temperature,
            vl.top_p,
            vl.top_k if vl.top_k > 0 else 0,
            vl.repetition_penalty,
        )
        assert (hf["min_p"] or 0.0) == vl.min_p == expected["min_p"]
    describe_doc = describe(cfg.generation, str(penalised_model), None)
    assert describe_doc["cot"] == {"model_defaults": mode, **expected, "max_tokens": 24}
    assert describe_doc["model_generation_config"]["repetition_penalty"] == 1.8


def test_the_hf_engine_applies_nothing_of_the_model_file_itself(penalised_model, hf_engine):
    """transformers fills what a caller leaves unset from the model's generation config; ours must
    not: the penalised copy samples exactly as the original under the same request, and applies the
    penalty only when the request carries it."""
    from pipeline.engines import get_engine

    penalised = get_engine(ModelConfig(path=str(penalised_model), engine="hf", max_model_len=1024), seed=0)
    assert model_generation_config(str(penalised_model))["repetition_penalty"] == 1.8
    prompt = hf_engine.tokenizer.encode("What is $23+45$?", add_special_tokens=False)

    def tokens(engine, **params):
        sampling = Sampling(n=3, temperature=1.0, top_p=1.0, max_tokens=30, seed=5, **params)
        [res] = engine.generate([Request("r", prompt, sampling)], call_seed=1)
        return [c.token_ids for c in res.completions]

    plain = tokens(hf_engine)
    assert tokens(penalised) == plain
    assert tokens(penalised, repetition_penalty=1.8, top_k=3) == tokens(hf_engine, repetition_penalty=1.8, top_k=3)
    assert tokens(hf_engine, repetition_penalty=1.8, top_k=3) != plain
