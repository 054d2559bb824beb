"""The two ExPO scores against a direct transformers computation on the same text, and the one-pass
scoring against the two separate passes it replaces."""

import pytest

from pipeline.answers import cut_before_answer
from pipeline.engines import Request, Sampling
from pipeline.prompts import EXPO_V1, render_chat
from pipeline.scoring import ScoreInput, answer_split, answer_target, literal_target, score_texts, surely_gold

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
    [explanation, expert], _ = score_texts(engine, [ScoreInput(prompt, TEXT, "68"), ScoreInput(prompt, EXPERT, "68")])
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
    [empty, long_text], _ = score_texts(hf_engine, [ScoreInput(prompt, "", "68"), ScoreInput(prompt, too_long, "68")])
    assert empty.nll_mean is None and empty.nll_tokens is None
    assert empty.answer_logprob is not None  # the answer right after the prompt is still scored
    assert long_text.nll_mean is None and long_text.answer_logprob is None


QUESTIONS = [
    ("What is $23+45$?", "68"),
    ("Compute $9 \\times 7$.", "63"),
    ("What is $84-29$?", "55"),
    ("What is $12+30$?", "42"),
]


def _two_pass(engine, prompt, text, gold):
    """The scores as two separate teacher-forced passes compute them: the text, then c' + the gold."""
    tok = engine.tokenizer
    text_ids = tok.encode(text, add_special_tokens=False)
    cut_ids, box_ids = answer_split(tok, text, gold)
    [text_lps, box_lps] = engine.score([prompt, prompt + cut_ids], [text_ids, box_ids])
    return -sum(text_lps) / len(text_lps), len(text_lps), sum(box_lps)


@pytest.mark.parametrize("name", ["hf_engine", "vllm_engine"])
def test_one_pass_scores_equal_the_two_pass_ones(name, request):
    """A text scored from generation's own log-probs (as a CoT is) and the same text teacher-forced
    (as an explanation is) get the scores two separate passes give. Texts are sampled after the
    answer-hinted prompt, so most end in the literal box of the gold and take answer_logprob from
    their own log-probs; where a text was sampled as other tokens than it re-encodes to, its
    nll_mean is over the sampled tokens, and the test checks that instead."""
    engine = request.getfixturevalue(name)
    tok = engine.tokenizer

    def encoded(kind, q, gold=None):
        return tok.encode(render_chat(tok, EXPO_V1.messages(kind, q, gold)), add_special_tokens=False)

    hinted = [encoded("explanation", q, gold) for q, gold in QUESTIONS]
    sampling = Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=100, seed=3)
    results = engine.generate([Request(str(i), p, sampling) for i, p in enumerate(hinted)])
    items = []
    for (q, gold), prompt, res in zip(QUESTIONS, hinted, results, strict=True):
        for c in res.completions:
            n = len(c.token_ids) - (c.finish_reason == "stop")
            items.append(ScoreInput(prompt, c.text, gold, generated=(c.token_ids[:n], c.token_logprobs[:n])))
            items.append(ScoreInput(encoded("cot", q), c.text, gold))  # teacher-forced after the plain prompt
            # without its final answer: the gold's box is scored in the text's own pass
            items.append(ScoreInput(encoded("cot", q), cut_before_answer(c.text).rstrip(), gold))
    scores, counts = score_texts(engine, items)
    tol = 1e-4 if name == "hf_engine" else 2e-3
    literal = canonical = 0
    for item, sc in zip(items, scores, strict=True):
        nll, n_tokens, answer = _two_pass(engine, item.prompt_ids, item.text, item.gold)
        assert sc.answer_logprob == pytest.approx(answer, abs=tol * 8)
        literal += literal_target(item.text, item.gold)
        if item.generated is None or item.generated[0] == tok.encode(item.text, add_special_tokens=False):
            canonical += item.generated is not None
            assert (sc.nll_mean, sc.nll_tokens) == (pytest.approx(nll, abs=tol), n_tokens)
        else:  # sampled as other tokens than the text re-encodes to: the mean over what was sampled
            ids, lps = item.generated
            assert (sc.nll_mean, sc.nll_tokens) == (pytest.approx(-sum(lps) / len(lps)), len(ids))
    assert literal >= 4 and canonical >= len(items) // 4  # the tiny model answers some literally
    # one pass per teacher-forced text, one per answer that is not the text's own
    teacher_forced = sum(item.generated is None for item in items)
    assert counts.passes == teacher_forced + (len(items) - counts.answers_reused)
    assert counts.answers_reused >= literal


def test_only_the_cots_that_are_used_pay_for_an_answer_pass(hf_engine):
    """With cot_answers: 1, a problem's CoTs that do not end in the gold get answer_logprob for the
    first of them only; the others keep nll_mean (it costs nothing) and a null answer_logprob."""
    from pipeline.completions import Generated, RequestMeta, score_shard
    from pipeline.config import ScoringConfig

    tok = hf_engine.tokenizer
    problems = [
        {"problem_id": f"p{i}", "question": q, "answer": a, "expert_solution": None, "level": 1, "subject": "x"}
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    requests, meta = [], {}
    for p in problems:
        messages = EXPO_V1.messages("cot", p["question"])
        ids = tok.encode(render_chat(tok, messages), add_special_tokens=False)
        requests.append(
            Request(f"{p['problem_id']}/cot", ids, Sampling(n=6, temperature=1.0, top_p=1.0, max_tokens=40, seed=1))
        )
        meta[requests[-1].request_id] = RequestMeta(p, "cot", messages)
    gen = Generated(problems, requests, meta, hf_engine.generate(requests))
    few, _, few_counts = score_shard(gen, hf_engine, EXPO_V1, ScoringConfig(cot_answers=1))
    every, _, every_counts = score_shard(gen, hf_engine, EXPO_V1, ScoringConfig(cot_answers="all"))
    others_seen = 0
    for p, res, row_few, row_all in zip(problems, gen.results, few, every, strict=True):
        others = [not surely_gold(c.text, p["answer"], "boxed_or_final") for c in res.completions]
        others_seen += sum(others)
        answered = [sc.answer_logprob is not None for sc in row_few]
        assert sum(a for a, o in zip(answered, others, strict=True) if o) == min(1, sum(others))
        assert all(a for a, o in zip(answered, others, strict=True) if not o)  # the gold's own: always
        assert answered.index(True) == 0 if others[0] else True  # the first in sample order
        assert all(sc.answer_logprob is not None and sc.nll_mean is not None for sc in row_all)
        assert all(sc.nll_mean is not None for sc in row_few)
    assert others_seen > len(problems)  # the limit was exercised
    assert few_counts.passes == len(problems) < every_counts.passes  # one answer pass per problem


def test_a_right_answer_without_the_gold_box_does_not_use_up_the_rejected_sides_place(hf_engine):
    """Scoring runs before the verifier. A CoT that states the gold without its box ("The answer is
    68") is a positive, so the place ``cot_answers: 1`` keeps goes to the first CoT the verifier will
    reject, the one ``build`` pairs: a right answer in place of the first wrong one left the pair's
    rejected side without answer_logprob."""
    from pipeline.completions import Generated, RequestMeta, score_shard
    from pipeline.config import ScoringConfig
    from pipeline.engines import Completion, Result

    tok = hf_engine.tokenizer
    problem = {"problem_id": "p0", "question": QUESTION, "answer": "68", "expert_solution": None}
    problem.update(level=1, subject="x")
    texts = [
        "23 + 45 = 68. The answer is 68.",  # right by statement: no box of the gold
        "23 + 45 = 68. So $\\boxed{ 68 }$.",  # right by the verifier's fast path, not literally
        "23 + 45 = 58. The final answer is \\boxed{58}.",  # the first the verifier rejects
        "23 + 45 = 78. The final answer is \\boxed{78}.",
    ]
    completions = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        completions.append(Completion(text, ids, "length", -float(len(ids)), [-1.0] * len(ids)))
    messages = EXPO_V1.messages("cot", QUESTION)
    ids = tok.encode(render_chat(tok, messages), add_special_tokens=False)
    request = Request("p0/cot", ids, Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=40, seed=1))
    result = Result("p0/cot", len(ids), completions)
    gen = Generated([problem], [request], {"p0/cot": RequestMeta(problem, "cot", messages)}, [result])
    [row], _, _ = score_shard(gen, hf_engine, EXPO_V1, ScoringConfig(cot_answers=1))
    assert [sc.answer_logprob is not None for sc in row] == [True, True, True, False]
    assert [surely_gold(t, "68", "boxed_or_final") for t in texts] == [True, True, False, False]
    assert not surely_gold(texts[0], "68", "boxed")  # under the boxed policy it has no answer
