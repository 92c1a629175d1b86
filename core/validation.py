"""Checks of user-given values that fail with one line naming the bad value and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peftbench.core.errors import ConfigError


def check_choice(kind: str, value: Any, choices: Iterable[str]) -> None:
    """Raise a one-line ConfigError when `value` is not one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
