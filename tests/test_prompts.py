import pytest

from pipeline.errors import ConfigError, ModelError
from pipeline.prompts import EXPO_V1, INSTRUCTION, PromptTemplate, get_template, render_chat

from .conftest import DATA


def test_templates_match_method():
    q = "What is $1+1$?"
    assert EXPO_V1.user_text(q) == f"{q}\n{INSTRUCTION}"
    assert EXPO_V1.user_text(q, "2") == f"{q}\nThe correct final answer is 2. {INSTRUCTION}"
    assert INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.mark.parametrize(
    "question",
    ["What is $1+1$?", "Let $f(x)=\\{x\\}$ with {braces} and {question} and {hint} and {answer} inside.", ""],
)
@pytest.mark.parametrize("answer", ["2", "\\frac{1}{2}", "{answer}", "(-\\infty, 2]"])
def test_explanation_prompt_is_the_cot_prompt_plus_the_answer_sentence(question, answer):
    cot = EXPO_V1.messages("cot", question)
    expl = EXPO_V1.messages("explanation", question, answer)
    sentence = EXPO_V1.hint(answer)
    assert len(cot) == len(expl) == 1 and cot[0]["role"] == expl[0]["role"] == "user"
    c, e = cot[0]["content"], expl[0]["content"]
    # The explanation prompt is the CoT prompt with the sentence inserted in one place, nothing else.
    i = e.index(sentence, len(question))
    assert e[:i] + e[i + len(sentence) :] == c
    assert len(e) == len(c) + len(sentence)


def test_rendered_chat_differs_only_by_the_sentence(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    q, a = "Compute $9 \\times 7$.", "63"
    cot = render_chat(tok, EXPO_V1.messages("cot", q))
    expl = render_chat(tok, EXPO_V1.messages("explanation", q, a))
    assert cot.endswith("<|im_start|>assistant\n")
    assert expl.replace(EXPO_V1.hint(a), "", 1) == cot


def test_template_validation():
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate("x", "{question}", "The answer is {answer}.")
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate("x", "{question}\n{hint}", "no answer slot")
    with pytest.raises(ConfigError, match="unknown prompt template"):
        get_template("nope")
    with pytest.raises(ValueError, match="needs the gold answer"):
        EXPO_V1.messages("explanation", "q")


def test_digest_changes_with_text():
    other = PromptTemplate("expo-v1", "{question}\n{hint}Think.", "Answer: {answer}. ")
    assert other.digest != EXPO_V1.digest


def test_render_requires_a_chat_template():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ModelError, match="no chat template"):
        render_chat(NoTemplate(), [{"role": "user", "content": "x"}])


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _trl_prompt_ids(tokenizer, messages):
    """The prompt as TRL's trainers render and tokenise a conversational ``prompt`` column."""
    from trl.data_utils import maybe_apply_chat_template

    text = maybe_apply_chat_template({"prompt": messages}, tokenizer)["prompt"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("system", [None, "", "You solve competition problems."])
def test_the_prompt_column_renders_to_the_tokens_generated_from(system, system_prompt_model):
    """Whatever the system turn (the chat template's default, an empty one, a text), the messages a
    row stores are what TRL renders to exactly the ids the engine was given."""
    from pipeline.completions import build_requests
    from pipeline.config import config_from_dict

    tok = _tokenizer(system_prompt_model)
    cfg = config_from_dict(
        {
            "output_dir": "o",
            "model": {"path": str(system_prompt_model)},
            "problems": {"source": "p"},
            "prompts": {"system": system},
            "generation": {"rollouts": 1, "explanations": 1},
        }
    )

    class Engine:  # only the tokenizer is read while requests are built
        tokenizer = tok

    problems = [{"problem_id": "p0", "question": "What is $23+45$?", "answer": "68"}]
    requests, meta = build_requests(problems, cfg, Engine(), EXPO_V1)
    for r in requests:
        messages = meta[r.request_id].messages
        assert (messages[0]["role"] == "system") == (system is not None)
        assert _trl_prompt_ids(tok, messages) == r.prompt_ids
        rendered = tok.decode(r.prompt_ids)
        assert ("Please reason step by step" in rendered.split("<|im_start|>user")[0]) == (system is None)


def test_a_system_prompt_that_repeats_the_instruction_is_warned_of(system_prompt_model, tiny_model):
    from pipeline.prompts import repeated_instruction

    math_tok = _tokenizer(system_prompt_model)
    warning = repeated_instruction(math_tok, EXPO_V1, None)
    assert "2 times" in warning and "prompts.system" in warning
    assert repeated_instruction(math_tok, EXPO_V1, "") is None
    assert repeated_instruction(math_tok, EXPO_V1, "You are a careful mathematician.") is None
    assert repeated_instruction(_tokenizer(tiny_model), EXPO_V1, None) is None


def test_the_system_turn_of_a_stored_prompt():
    from pipeline.prompts import system_of

    assert system_of(EXPO_V1.messages("cot", "Q")) is None
    assert system_of(EXPO_V1.messages("cot", "Q", system="")) == ""
    assert system_of(EXPO_V1.messages("explanation", "Q", "1", system="Be brief.")) == "Be brief."
    assert system_of([]) is None


def test_eval_prompts_carry_the_system_turn_it_is_given(hf_engine, pool):
    """`expo-data eval --system` and the online loop (from the run's prompts.system) evaluate with the
    system turn the training data was generated with."""
    from pipeline.config import ModelConfig, ProblemsConfig
    from pipeline.evaluate import EvalSpec, evaluate

    seen = []

    class Recording:  # the real engine, recording what it is asked
        tokenizer = hf_engine.tokenizer
        max_model_len = hf_engine.max_model_len

        def generate(self, requests, call_seed=0):
            seen.extend(requests)
            return hf_engine.generate(requests, call_seed)

    problems = ProblemsConfig(source=str(DATA / "problems" / "math.jsonl"), limit=2)
    for system, shown in ((None, False), ("Show your work.", True)):
        seen.clear()
        spec = EvalSpec(samples=1, ks=(1,), max_tokens=8, system=system)
        evaluate(ModelConfig(path=hf_engine.model_id, engine="hf"), problems, spec, pool, engine=Recording())
        assert len(seen) == 2
        texts = [hf_engine.tokenizer.decode(r.prompt_ids) for r in seen]
        assert all(("<|im_start|>system\nShow your work." in t) == shown for t in texts)
