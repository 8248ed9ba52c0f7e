"""`consortium chaos` on bad input: one line on stderr, exit 2, nothing started."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from apps.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["chaos", *args])
    return result.exit_code, result.stdout, result.stderr


def test_help_names_the_options() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for option in ("--seed", "--duration", "--json", "--cleanup", "--keep", "--recovery-bound"):
        assert option in out


@pytest.mark.parametrize(("args", "message"), [
    ((), "--seed is required (or --cleanup)"),
    (("--seed", "1", "--duration", "two minutes"), "is not a duration"),
    (("--seed", "1", "--duration", "5"), "--duration must be at least 10 s"),
])
def test_bad_input_is_one_line(args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("consortium chaos: ") and message in err


def test_durations_take_units() -> None:
    from apps.chaos import _duration

    assert (_duration("90"), _duration("90s"), _duration("2m"), _duration("1h")) == \
        (90.0, 90.0, 120.0, 3600.0)
