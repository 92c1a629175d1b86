"""A researcher's own method from their own package, no edit here: through an entry point (`peftbench.methods`) or
`method.module=`, its YAML on Hydra's search path (`hydra.searchpath=[pkg://...]` or a folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import peftbench.bench.run
import pytest
from peftbench.bench.config import check_overrides
from peftbench.core.errors import ConfigError

from tests.conftest import REPO, SMOKE, compose_run, records, run_cli

# docs/methods.md's example package, as a researcher writes it.
MY_METHOD = '''"""LoRA with a Gaussian-initialised A (PEFT's init_lora_weights="gaussian"), not Kaiming-uniform."""

from typing import Any

from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora


@register
class MyMethod(Lora):
    name = "my_method"

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {"init_lora_weights": "gaussian"}
'''
MY_YAML = "name: my_method\nlora_alpha: 16\nlora_dropout: 0.0\ntarget_modules: null\nbias: none\n"
# an entry point may also name a Method subclass that no decorator registered
OTHER = '''"""A method class registered by its entry point (no decorator)."""

from peftbench.methods.lora import Lora


class OtherMethod(Lora):
    name = "my_other_method"
'''
ENTRY_POINTS = "[peftbench.methods]\nmy_method = my_pkg.my_method\nmy_other_method = my_pkg.other:OtherMethod\n"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """my_pkg on a PYTHONPATH folder with a minimal .dist-info: what `pip install` leaves for importlib.metadata."""
    return _write(
        tmp_path_factory.mktemp("site"),
        {
            "my_pkg/__init__.py": "",
            "my_pkg/my_method.py": MY_METHOD,
            "my_pkg/other.py": OTHER,
            "my_pkg/conf/method/my_method.yaml": MY_YAML,
            "my_pkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: my_pkg\nVersion: 0.1\n",
            "my_pkg-0.1.dist-info/entry_points.txt": ENTRY_POINTS,
        },
    )


def test_an_entry_point_method_runs_with_its_yaml_on_the_search_path(installed: Path, tmp_path: Path) -> None:
    done = run_cli(
        "method=my_method", "hydra.searchpath=[pkg://my_pkg.conf]", *SMOKE, f"store.root={tmp_path}",
        env={"PYTHONPATH": str(installed)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = records(tmp_path)
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["method"] == "my_method" and record["config"]["method"]["name"] == "my_method"


def test_entry_points_register_modules_and_classes(installed: Path) -> None:
    code = (
        "from peftbench.methods.base import get_method, method_names; "
        "print(method_names()); print(type(get_method('my_other_method')).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{installed}:{REPO}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    names, cls = done.stdout.strip().splitlines()
    assert "'my_method'" in names and "'my_other_method'" in names and "'lora'" in names
    assert cls == "OtherMethod"


def test_method_module_imports_a_package_without_entry_points(tmp_path: Path) -> None:
    """`method.module=` (no `+` needed) imports the module; the YAML sits in a plain folder on the search path."""
    plugin = _write(
        tmp_path / "plugin",
        {
            "their_pkg/__init__.py": "",
            "their_pkg/their_method.py": MY_METHOD.replace('"my_method"', '"their_method"'),
            "conf/method/their_method.yaml": MY_YAML.replace("my_method", "their_method"),
        },
    )
    store = tmp_path / "runs"
    done = run_cli(
        "method=their_method", "method.module=their_pkg.their_method", f"hydra.searchpath=[file://{plugin}/conf]",
        *SMOKE, f"store.root={store}", env={"PYTHONPATH": str(plugin)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = records(store)
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["method"] == "their_method" and record["config"]["method"]["module"] == "their_pkg.their_method"


def test_search_path_yaml_is_a_valid_choice_and_unknown_names_stay_one_line(tmp_path: Path) -> None:
    _write(tmp_path, {"conf/method/mine.yaml": "name: mine\n"})
    check_overrides(["method=mine", f"hydra.searchpath=[{tmp_path}/conf]"])
    check_overrides(["method=lora,mine", f"hydra.searchpath=[file://{tmp_path}/conf]"])
    with pytest.raises(ConfigError, match=r"^unknown method 'mine'; valid choices: adalora, "):
        check_overrides(["method=mine"])
    with pytest.raises(ConfigError, match=r"^unknown method 'yours'; valid choices: .*lorahub, .*mine, "):
        check_overrides(["method=yours", f"hydra.searchpath=[{tmp_path}/conf]"])
    with pytest.raises(ConfigError, match=r"^hydra.searchpath entry 'pkg://no_such_pkg.conf': no importable package"):
        check_overrides(["method=mine", "hydra.searchpath=[pkg://no_such_pkg.conf]"])
    with pytest.raises(ConfigError, match=r"^hydra.searchpath entry '/no/such/dir': no such folder$"):
        check_overrides(["hydra.searchpath=[/no/such/dir]"])


def test_an_entry_point_method_without_its_yaml_names_the_search_path(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(installed))
    import importlib

    importlib.invalidate_caches()
    with pytest.raises(
        ConfigError, match=r"^method 'my_method' \(entry point 'my_pkg.my_method'\) has no method/my_me"
    ):
        check_overrides(["method=my_method"])


def test_a_bad_method_module_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^method.module='no_such.module' cannot be imported: ModuleNotFoundError"):
        peftbench.bench.run.identify(compose_run(tmp_path, "+method.module=no_such.module"))
    with pytest.raises(
        ConfigError, match=r"^method.module='peftbench.methods.lora' registers no method 'mine'; valid choices: "
    ):
        peftbench.bench.run.identify(compose_run(tmp_path, "+method.module=peftbench.methods.lora", "method.name=mine"))
