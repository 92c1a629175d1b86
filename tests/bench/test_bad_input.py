"""Bad input: one line naming the bad value and the valid choices, exit code 2, nothing trained, no record."""

from __future__ import annotations

from pathlib import Path

import peftbench.bench.run
import pytest
from peftbench.bench.config import check_overrides
from peftbench.core.errors import ConfigError

from tests.conftest import compose_run, records, run_cli


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=lorra", r"^unknown method 'lorra'; valid choices: adalora, adalora_mpco, adamole, .*full, .*lora, "),
        ("model=bert-huge", r"^unknown model 'bert-huge'; valid choices: .*minilm.*roberta-base"),
        ("task=glue_sst3", r"^unknown task 'glue_sst3'; valid choices: commonsense, .*glue_cola, .*glue_sst2"),
        ("task=glue_rte,glue_wnli", r"^unknown task 'glue_wnli'; valid choices"),
        ("sweep=nightly", r"^unknown sweep 'nightly'; valid choices: commonsense, demo, .*glue, goat_t1, .*none, "),
    ],
)
def test_unknown_names_on_the_command_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_overrides([override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rank=0"], r"^rank=0 is not valid; give a positive integer"),
        (["rank=-3"], r"^rank=-3 is not valid"),
        (["rank=2.5"], r"^rank=2.5 is not valid"),
        (["rank=abc"], r"^rank='abc' is not valid"),
        (["rank=33"], r"^rank=33 exceeds min\(in, out\)=32 of target layer .*valid ranks: 1\.\.32"),
        (["lr=0"], r"^lr=0 is not valid; give a positive number"),
        (["lr=-1e-3"], r"^lr=-0.001 is not valid"),
        (["lr=abc"], r"^lr='abc' is not a number"),
        (["lr=nan"], r"^lr=nan is not valid"),
        (["seed=-1"], r"^seed=-1 is not valid; give an integer >= 0"),
        (["data=cloud"], r"^unknown data source 'cloud'; valid choices: hub, offline"),
        (
            ["task=glue_cola"],
            r"^task 'glue_cola' has no offline data .*offline tasks: glue_mrpc, glue_rte, glue_sst2",
        ),
        (
            ["model.tokenizer.package=not_a_pkg"],
            r"^offline asset package 'not_a_pkg' is not installed; run `make setup`",
        ),
        (["method.lora_alpha=abc"], r"^method.lora_alpha='abc' is not valid; expected float"),
        (["+method.rnak=4"], r"^unknown key method.rnak for method 'lora'; valid keys:"),
        (["task.max_eval_samples=0"], r"^task.max_eval_samples=0 is not valid"),
        (
            ["method=lora", "method.target_modules=[q_proj]"],
            r"match no linear layer of this model; valid choices:",
        ),
        # the tracks of the three other task families
        (["task=gsm8k", "task.train_on=mathqa"], r"^unknown task.train_on 'mathqa'; valid choices: metamathqa, gsm8k"),
        (["task=gsm8k", "task.generation.max_new_tokens=0"], r"^task.generation.max_new_tokens=0 is not valid"),
        (
            ["task=commonsense", "task.evaluate=[cs_mmlu]"],
            r"^unknown commonsense set 'cs_mmlu'; valid choices: cs_boolq",
        ),
        (["task=cs_piqa", "task.generation.num_beams=two"], r"^task.generation.num_beams='two' is not valid"),
        (
            ["task=img_cars"],
            r"^task 'img_cars' has no offline data .*offline image tasks: img_digits, img_fashion_mnist",
        ),
        (["task=img_digits", "data=hub"], r"^task 'img_digits' has no hub data \(data=hub\); use data=offline"),
        (["task=img_digits", "task.num_labels=1"], r"^task.num_labels=1 is not valid; give the number of classes"),
        (["model=tiny-llama", "method=bitfit"], r"^method bitfit needs bias terms and LlamaForSequenceClassification"),
        (["task=gsm8k", "task.max_seq_length=0"], r"^task.max_seq_length=0 is not valid; give a positive integer"),
        (["store.root=/proc/peftbench"], r"^store.root='/proc/peftbench' cannot be created"),
    ],
)
def test_bad_values_fail_before_training_without_a_record(
    store: Path, overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(peftbench.bench.run, "train_and_evaluate", never)
    with pytest.raises(ConfigError, match=message) as caught:
        peftbench.bench.run.run(compose_run(store, *overrides))
    assert "\n" not in str(caught.value)
    assert records(store) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["method=lorra"],
            "peftbench: error: unknown method 'lorra'; valid choices: adalora, adalora_mpco, adamole, bitfit, dora,",
        ),
        (["rank=33"], "peftbench: error: rank=33 exceeds min(in, out)=32 of target layer"),
        (["lr=abc"], "peftbench: error: lr='abc' is not a number; give a positive number such as 5e-4"),
    ],
)
def test_command_line_prints_one_line_and_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    store = tmp_path / "runs"
    smoke = ["model=tiny-roberta", "trainer=smoke", "data=offline", "task=glue_rte", f"store.root={store}"]
    done = run_cli(*smoke, *args)
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("peftbench: error:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(message)
    assert "Traceback" not in done.stderr
    assert records(store) == []
