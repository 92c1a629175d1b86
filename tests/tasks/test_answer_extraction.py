"""Answer extraction on hand-written model outputs: GSM8K strict/flexible and every commonsense format."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from peftbench.tasks.commonsense import FORMATS, LLM_ADAPTERS_LABELS, extract_choice, extract_first
from peftbench.tasks.gsm8k import extract_flexible, extract_goat, extract_strict, is_correct


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


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("so 9 * 2 = 18\n#### 18\nThe answer is: 18", 18),  # a MetaMathQA GSM response as it is
        ("#### 1,234", 1234),
        ("#### 3.5", 3),  # GOAT's regex stops at the point: int("3")
        ("#### -4", -4),
        ("#### 5\n#### 6", 5),  # the first "####" wins (ours: two answers, wrong)
        ("The answer is 18.", 0),  # no "####": GOAT scores it as 0
        ("#### $18", 0),  # "$" right after the marker is no integer
    ],
)
def test_gsm8k_goat_extraction(output: str, expected: int) -> None:
    assert extract_goat(output) == expected


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


# Rows of LLM-Adapters' dataset/<set>/test.json (AGI-Edgerunners/LLM-Adapters@8166572, byte-identical in GOAT-PEFT
# and Subspace-Tuning) with the hub rows they come from: our formats must rebuild them byte for byte.
VERBATIM = [
    ("boolq", {"question": "does ethanol take more energy make that produces", "answer": False, "passage": "All"},
     "Please answer the following question with true or false, question: does ethanol take more energy make that "
     "produces?\n\nAnswer format: true/false", "false"),
    ("piqa", {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin ",
              "label": 1},
     "Please choose the correct solution to the question: dresser\n\nSolution1: replace drawer with bobby pin \n\n"
     "Solution2: finish, woodgrain with  bobby pin \n\nAnswer format: solution1/solution2", "solution2"),
    ("siqa", {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
              "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
              "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"},
     "Please choose the correct answer to the question: Tracy didn't go home that evening and resisted Riley's "
     "attacks. What does Tracy need to do before this?\n\nAnswer1: make a new plan Answer2: Go home and see Riley "
     "Answer3: Find somewhere to go\n\nAnswer format: answer1/answer2/answer3", "answer3"),
    ("hellaswag", {"activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs "
                   "the pole.", "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the "
                   "pole. the lady", "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                   "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
                   "label": "3"},
     "Please choose the correct ending to complete the given sentence: Clean and jerk: A lady walks to a barbell. She "
     "bends down and grabs the pole. the lady\n\nEnding1: swings and lands in her arms. Ending2: pulls the barbell "
     "forward. Ending3: pulls a rope attached to the barbell. Ending4: stands and lifts the weight over her head.\n\n"
     "Answer format: ending1/ending2/ending3/ending4", "ending4"),
    ("winogrande", {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                    "option1": "Sarah", "option2": "Maria", "answer": "2"},
     "Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a much better "
     "surgeon than Maria so _ always got the easier cases.\n\nOption1: Sarah Option2: Maria Answer format: "
     "option1/option2", "option2"),
    ("arc", {"question": "Which piece of safety equipment is used to keep mold spores from entering the respiratory "
             "system?", "choices": {"text": ["safety goggles", "breathing mask", "rubber gloves", "lead apron"],
             "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
     "Please choose the correct answer to the question: Which piece of safety equipment is used to keep mold spores "
     "from entering the respiratory system?\n\nAnswer1: safety goggles Answer2: breathing mask Answer3: rubber "
     "gloves Answer4: lead apron\n\nAnswer format: answer1/answer2/answer3/answer4", "answer2"),
    ("obqa", {"question_stem": "There is most likely going to be fog around:", "fact1": "not used",
              "choices": {"text": ["a marsh", "a tundra", "the plains", "a desert"], "label": ["A", "B", "C", "D"]},
              "answerKey": "A"},
     "Please choose the correct answer to the question: There is most likely going to be fog around:\n\nAnswer1: a "
     "marsh Answer2: a tundra Answer3: the plains Answer4: a desert\n\nAnswer format: answer1/answer2/answer3/"
     "answer4", "answer1"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "instruction", "answer"), VERBATIM, ids=[v[0] for v in VERBATIM])
def test_instructions_are_byte_equal_to_llm_adapters(fmt: str, row: dict, instruction: str, answer: str) -> None:
    build, _ = FORMATS[fmt]
    assert build(row) == (instruction, answer)


def test_templates_are_llm_adapters_own() -> None:
    """commonsense_evaluate.py:121-140 (evaluation) and finetune.py:323-343 (training), whitespace included."""
    from omegaconf import OmegaConf
    from peftbench.core.paths import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "task" / "commonsense.yaml")
    indent = " " * 16
    assert cfg.prompt.format(instruction="I") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        f"\n\n{indent}### Instruction:\n{indent}I\n\n{indent}### Response:\n{indent}"
    )
    assert cfg.train_prompt.format(instruction="I") + "the correct answer is true" == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
        f"\n\n{indent}### Instruction:\n{indent}I\n{indent}\n{indent}### Response:\n{indent}the correct answer is true"
    )
    assert cfg.train_on_inputs is True and cfg.generation.num_beams == 4 and cfg.generation.max_new_tokens == 32


# Outputs on which LLM-Adapters' rule (first label substring, case-sensitive) and ours (one label, as a word, any
# case) disagree: `accuracy` follows theirs, `accuracy_strict` ours.
DISAGREEMENTS = [
    ("boolq", "the correct answer is true. false", "true", None),
    ("boolq", "The correct answer is True", None, "true"),
    ("boolq", "falsely", "false", None),
    ("boolq", "TRUE", None, "true"),
    ("piqa", "solution2 or solution1", "solution2", None),
    ("piqa", "Solution1", None, "solution1"),
    ("siqa", "the correct answer is answer4", "answer4", None),  # their regex has answer1-5 for SIQA
    ("siqa", "answer3answer1", "answer3", None),
    ("hellaswag", "ending2, not ending3", "ending2", None),
    ("winogrande", "option2 ### Response: option1", "option2", None),
    ("winogrande", "### Response: option1", None, "option1"),  # LLM-Adapters keeps what precedes it
    ("arc", "answer1answer2", "answer1", None),
    ("obqa", "ANSWER2", None, "answer2"),
]


@pytest.mark.parametrize(("fmt", "output", "first", "strict"), DISAGREEMENTS)
def test_first_match_and_strict_rules_disagree_as_designed(fmt: str, output: str, first: str, strict: str) -> None:
    assert extract_first(output, LLM_ADAPTERS_LABELS[fmt]) == first
    assert extract_choice(output, FORMATS[fmt][1]) == strict


# The evaluators split prompt + output at "### Response:" (the prompt ends with one): LLM-Adapters keeps part [1],
# the output before a second marker (`first`); DoRA, Subspace Tuning and GOAT keep part [-1] (`last`).
SEGMENTS = [
    ("winogrande", "the correct answer is option2", "option2", "option2"),  # one marker: the same text
    ("winogrande", "option2 ### Response: option1", "option2", "option1"),
    ("winogrande", "### Response: option1", None, "option1"),
    ("boolq", "true\n### Response: false ### Response: no answer", "true", None),  # after the last: nothing
]


@pytest.mark.parametrize(("fmt", "output", "first", "last"), SEGMENTS)
def test_answer_segment_first_is_llm_adapters_last_is_doras(fmt: str, output: str, first: str, last: str) -> None:
    labels = LLM_ADAPTERS_LABELS[fmt]
    prompt = "### Instruction:\nQ\n\n### Response:\n"
    assert extract_first(output, labels, "first") == first
    assert extract_first(output, labels, "last") == last
    # as their code reads it: the decoded prompt + output, split, part [1] or [-1], then their regex's first match
    for segment, part in (("first", 1), ("last", -1)):
        text = (prompt + output).split("### Response:")[part].strip()
        found = re.findall("|".join(labels), text)
        assert extract_first(output, labels, segment) == (found[0] if found else None)


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
    instruction, answer = hellaswag({**row, "ctx": "A man is on a roof. he", "label": "3"})
    assert instruction.startswith(
        "Please choose the correct ending to complete the given sentence: Roof: A man is on a roof. he"
    )  # the hub's ctx as it is
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


def test_goat_gsm8k_subset_filters_type_and_length_in_file_order() -> None:
    """GOAT's selection (llama_dataset_preprocessing.py:232-281): type contains "GSM", prompt + " " + response under
    max_tokens tokens (BOS counted), the first `keep` rows in file order, responses untouched."""
    from datasets import Dataset
    from omegaconf import OmegaConf
    from peftbench.bench.models import load_tokenizer
    from peftbench.core.paths import CONF_DIR
    from peftbench.tasks.generation import PromptEncoder
    from peftbench.tasks.gsm8k import goat_subset

    tokenizer = load_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml"))
    encoder = PromptEncoder(tokenizer, max_length=512, separator=" ")
    short, long = "two plus two is four #### 4\nThe answer is: 4", "many words " * 40 + "#### 4"
    rows = Dataset.from_list([
        {"prompt": "Q0", "target": short, "type": "GSM_AnsAug"},
        {"prompt": "Q1", "target": short, "type": "MATH_AnsAug"},  # not GSM
        {"prompt": "Q2", "target": long, "type": "GSM_SV"},  # too long
        {"prompt": "Q3", "target": short, "type": "GSM_Rephrased"},
        {"prompt": "Q4", "target": short, "type": "GSM_FOBAR"},
        {"prompt": "Q5", "target": short, "type": "GSM_AnsAug"},
    ])  # fmt: skip
    assert len(encoder.prompt("Q2 " + long)) >= 64 > len(encoder.prompt("Q0 " + short))
    picked = goat_subset(rows, encoder, keep=3, type_contains="GSM", max_tokens=64)
    assert picked["prompt"] == ["Q0", "Q3", "Q4"]  # file order, not a sample
    assert picked["target"][0] == short and "type" not in picked.column_names
    assert goat_subset(rows, encoder, keep=None, type_contains="GSM", max_tokens=64)["prompt"] == [
        "Q0",
        "Q3",
        "Q4",
        "Q5",
    ]
