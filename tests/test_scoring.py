"""The two ExPO scores against a direct transformers computation on the same text."""

import pytest

from pipeline.answers import cut_before_answer
from pipeline.prompts import EXPO_V1, render_chat
from pipeline.scoring import ScoreInput, answer_target, score_texts

QUESTION = "What is $23+45$?"
TEXT = "We add 23 and 45.\n23 + 45 = 68\nThe final answer is \\boxed{68}."
EXPERT = "Adding tens and ones separately, $23+45=(20+40)+(3+5)=60+8=\\boxed{68}$."


def _plain(tok):
    return tok.encode(render_chat(tok, EXPO_V1.messages("cot", QUESTION)), add_special_tokens=False)


def _direct(model_dir, prefix, target):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prefix + target])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[len(prefix) - 1 + t, tok].item() for t, tok in enumerate(target)]


@pytest.mark.parametrize("name", ["hf_engine", "vllm_engine"])
def test_nll_mean_and_answer_logprob_match_a_direct_computation(name, request, tiny_model):
    engine = request.getfixturevalue(name)
    tok = engine.tokenizer
    prompt = _plain(tok)
    [explanation, expert] = score_texts(engine, [ScoreInput(prompt, TEXT, "68"), ScoreInput(prompt, EXPERT, "68")])
    tol = 1e-4 if name == "hf_engine" else 2e-3  # vLLM's CPU kernels differ from eager torch in the 4th digit
    for text, scores in ((TEXT, explanation), (EXPERT, expert)):
        target = tok.encode(text, add_special_tokens=False)
        direct = _direct(tiny_model, prompt, target)
        assert scores.nll_tokens == len(target)
        assert scores.nll_mean == pytest.approx(-sum(direct) / len(direct), abs=tol)
        cut = cut_before_answer(text)
        stripped = cut.rstrip()
        prefix = prompt + tok.encode(stripped, add_special_tokens=False)
        box = tok.encode(cut[len(stripped) :] + answer_target("68"), add_special_tokens=False)
        assert scores.answer_logprob == pytest.approx(sum(_direct(tiny_model, prefix, box)), abs=tol * len(box))
    # the ExPO picture on the tiny model: its own style is in-distribution, the expert's is not
    assert explanation.nll_mean < expert.nll_mean
    assert explanation.answer_logprob > -1.0


def test_answer_target_leaves_out_the_closing_brace():
    assert answer_target("\\frac{1}{2}") == "\\boxed{\\frac{1}{2}"


def test_scores_are_null_where_they_cannot_be_computed(hf_engine):
    prompt = _plain(hf_engine.tokenizer)
    too_long = "1 + " * hf_engine.max_model_len
    [empty, long_text] = score_texts(hf_engine, [ScoreInput(prompt, "", "68"), ScoreInput(prompt, too_long, "68")])
    assert empty.nll_mean is None and empty.nll_tokens is None
    assert empty.answer_logprob is not None  # the answer right after the prompt is still scored
    assert long_text.nll_mean is None and long_text.answer_logprob is None
