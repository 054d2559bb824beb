import pytest

from pipeline.errors import ConfigError, ModelError
from pipeline.prompts import EXPO_V1, INSTRUCTION, PromptTemplate, get_template, render_chat


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
