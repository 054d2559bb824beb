import json
from pathlib import Path

import pytest

from pipeline.leaks import REASONS, detect_leak
from pipeline.prompts import EXPO_V1

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "hint_leak_cases.jsonl").open()]


def test_labelled_set_is_large_and_balanced():
    assert len(CASES) >= 30
    leaks = sum(c["leak"] for c in CASES)
    assert 0.3 < leaks / len(CASES) < 0.7


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_labelled_explanations(case):
    found = detect_leak(case["explanation"], EXPO_V1.hint(case["answer"]), case["question"])
    assert (found is not None) == case["leak"], (case["note"], found)
    if found:
        assert found.reason in REASONS and found.match


def test_the_literal_hint_sentence_is_a_leak_whatever_the_answer():
    hint = EXPO_V1.hint("(-\\infty, 2]")
    found = detect_leak("The correct final answer is (-\\infty, 2]. So x <= 2 and \\boxed{(-\\infty, 2]}.", hint)
    assert found is not None and found.reason == "hint_sentence"


def test_a_plain_derivation_is_not_a_leak():
    assert detect_leak("We add 23 and 45.\n23 + 45 = 68\nThe final answer is \\boxed{68}.", EXPO_V1.hint("68")) is None
