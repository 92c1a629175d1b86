"""Answer extraction on hand-written model outputs: GSM8K strict/flexible and every commonsense format."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tasks.commonsense import FORMATS, extract_choice
from tasks.gsm8k import extract_flexible, extract_strict, is_correct, metamath_target


@pytest.mark.parametrize(
    ("output", "strict", "flexible"),
    [
        ("She sells 9 eggs at $2.\n#### 18", "18", "18"),
        ("#### 1,234", "1234", "1234"),
        ("The total is $18.00.\n####  $18.00", "18", "18"),
        ("#### -3", "-3", "-3"),
        ("so 4 + 5 = 9 apples, then 9 * 2 = 18", None, "18"),  # no ####: flexible takes the last number
        ("The answer is 18.", None, "18"),
        ("I do not know.", None, None),  # no number at all
        ("", None, None),
        ("#### 5\n#### 6", None, None),  # two different final answers: wrong under both rules
        ("#### 7 and again #### 7.0", "7", "7"),  # the same answer twice is one answer
        ("#### twelve", None, None),  # a marker without a number, no other number
        ("#### twelve, that is 12", None, "12"),  # no number after the marker: flexible falls back
    ],
)
def test_gsm8k_extraction(output: str, strict: str | None, flexible: str | None) -> None:
    assert extract_strict(output) == (None if strict is None else Decimal(strict))
    assert extract_flexible(output) == (None if flexible is None else Decimal(flexible))


def test_gsm8k_correctness_is_numeric_and_none_is_wrong() -> None:
    assert is_correct(Decimal("18.0"), "18")
    assert not is_correct(Decimal("18.5"), "18")
    assert not is_correct(None, "18")


def test_metamath_ending_becomes_gsm8k_marker() -> None:
    response = "Janet has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = 18 dollars.\nThe answer is: 18"
    assert metamath_target(response).endswith("dollars.\n#### 18")
    assert extract_strict(metamath_target(response)) == Decimal(18)
    assert metamath_target("no closing sentence") == "no closing sentence"


@pytest.mark.parametrize(
    ("fmt", "output", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "The correct answer is FALSE.", "false"),
        ("boolq", "true or false? false", None),  # two answers
        ("boolq", "untrue statement", None),  # not a word of its own
        ("piqa", "the correct answer is solution2", "solution2"),
        ("piqa", "solution1 solution1", "solution1"),
        ("piqa", "solution3", None),  # not a label of this set
        ("siqa", "the correct answer is answer3", "answer3"),
        ("siqa", "answer1, no, answer2", None),
        ("hellaswag", "the correct answer is ending4", "ending4"),
        ("hellaswag", "ending", None),
        ("winogrande", "the correct answer is option1", "option1"),
        ("winogrande", "", None),
        ("arc", "the correct answer is answer5", "answer5"),
        ("arc", "answer10", None),
        ("obqa", "the correct answer is answer2 because ...", "answer2"),
        ("obqa", "I cannot tell", None),
    ],
)
def test_commonsense_extraction(fmt: str, output: str, expected: str | None) -> None:
    _, labels = FORMATS[fmt]
    assert extract_choice(output, labels) == expected


def test_commonsense_formats_build_llm_adapters_instructions() -> None:
    boolq, _ = FORMATS["boolq"]
    instruction, answer = boolq({"question": "is the sky blue", "answer": True, "passage": "..."})
    assert instruction == (
        "Please answer the following question with true or false, question: is the sky blue?\n\n"
        "Answer format: true/false"
    )
    assert answer == "true"
    piqa, _ = FORMATS["piqa"]
    instruction, answer = piqa({"goal": "open a jar", "sol1": "twist", "sol2": "push", "label": 1})
    assert instruction == (
        "Please choose the correct solution to the question: open a jar\n\nSolution1: twist\n\nSolution2: push"
        "\n\nAnswer format: solution1/solution2"
    )
    assert answer == "solution2"
    siqa, _ = FORMATS["siqa"]
    row = {"context": "Tracy stayed.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}
    assert siqa(row)[1] == "answer3"
    assert siqa(row)[0].endswith("Answer3: c\n\nAnswer format: answer1/answer2/answer3")
    hellaswag, _ = FORMATS["hellaswag"]
    row = {"activity_label": "Roof", "ctx_a": "A man is on a roof.", "ctx_b": "he", "endings": list("wxyz")}
    instruction, answer = hellaswag({**row, "label": "3"})
    assert instruction.startswith(
        "Please choose the correct ending to complete the given sentence: Roof: A man is on a roof. He"
    )
    assert answer == "ending4"
    winogrande, _ = FORMATS["winogrande"]
    assert winogrande({"sentence": "_ won.", "option1": "A", "option2": "B", "answer": "2"})[1] == "option2"
    arc, _ = FORMATS["arc"]
    row = {"question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}, "answerKey": "3"}
    instruction, answer = arc(row)
    assert answer == "answer3" and instruction.endswith("Answer format: answer1/answer2/answer3")
    obqa, _ = FORMATS["obqa"]
    row = {"question_stem": "Q", "choices": {"text": list("abcd"), "label": list("ABCD")}, "answerKey": "B"}
    assert obqa(row)[1] == "answer2"
