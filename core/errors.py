"""The one error type for bad user input: raised before any training, printed as a single line."""


class ConfigError(ValueError):
    """A bad value in the run's configuration or a missing asset.

    The message is one line that names the bad value and the valid choices. The runner prints it
    and exits non-zero without writing a record.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Condense an exception into a single line: `Type: message`, whitespace collapsed, truncated."""
    text = " ".join(str(exc).split()) or "(no message)"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


class NotMergeable(RuntimeError):
    """Raised by an adapter whose update depends on the input (routers, nonlinearities) when asked to merge."""
