import pytest

from pipeline.answers import boxed_spans, gsm8k_final, last_boxed, strip_gsm8k_calculator


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1,5\}}", r"\{1,5\}"),  # escaped braces do not close the box
        (r"\boxed{[-3,4)}", "[-3,4)"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5.", "5"),
        (r"\boxed {  x+1 }", "x+1"),
        (r"no box here, the answer is 5", None),
        (r"\boxed{unbalanced", None),
        (r"\boxed{}", ""),
        (r"\boxed{\text{(C)}} and later \boxed{\left(3, \frac{\pi}{2}\right)}", r"\left(3, \frac{\pi}{2}\right)"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_boxed_spans_in_order():
    assert boxed_spans(r"\boxed{1}, \boxed{2} and \boxed{3}") == ["1", "2", "3"]


def test_unbalanced_box_does_not_hide_a_later_good_one():
    assert last_boxed(r"\boxed{oops and then \boxed{4}") == "4"


def test_gsm8k_final():
    assert gsm8k_final("5*3=<<5*3=15>>15 apples\n#### 15") == "15"
    assert gsm8k_final("a\n#### 1,200") == "1,200"
    assert gsm8k_final("no marker") is None
    assert gsm8k_final("#### ") is None
    assert strip_gsm8k_calculator("4*12=<<4*12=48>>48 markers") == "4*12=48 markers"


def test_adversarial_nesting_is_one_pass():
    """20,000 nested boxes: one pass with a brace stack finds all of them (a backtracking pattern
    would not return on this input); the last by position is the innermost, holding x."""
    from pipeline.answers import boxes

    depth = 20000
    text = r"\boxed{" * depth + "x" + "}" * depth
    found = boxes(text)
    assert len(found) == depth and found[-1][1] == "x"
    assert last_boxed(text) == "x"
