"""Preset selection and command-line parsing."""

import dataclasses

import pytest

from harness import config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    steps: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example:
    preset: str = "small"
    learning_rate: float = 0.1
    widths: tuple[int, ...] = (8, 6)
    data_dir: str | None = None
    task: Inner = Inner()


PRESETS = {
    "smoke": Example(preset="smoke", learning_rate=0.5, task=Inner(steps=2)),
    "small": Example(),
    "paper": Example(preset="paper", task=Inner(steps=100)),
}


def test_preset_then_overrides():
    parsed = config.parse_cli(PRESETS, args=["--preset", "smoke", "--widths", "4", "2", "--task.steps", "9"])
    assert parsed == Example(preset="smoke", learning_rate=0.5, widths=(4, 2), task=Inner(steps=9))


def test_default_preset_is_small():
    assert config.parse_cli(PRESETS, args=[]) == PRESETS["small"]


def test_unknown_preset_is_a_value_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*smoke"):
        config.parse_cli(PRESETS, args=["--preset", "huge"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--learning-rate", "fast"], "Error parsing --learning-rate: "),
        (["--no-such-option", "1"], "Unrecognized options: --no-such-option, 1"),
    ],
)
def test_bad_values_and_unknown_options_raise_one_line(args, message):
    with pytest.raises(ValueError) as caught:
        config.parse_cli(PRESETS, args=args, prog="python -m example")
    text = str(caught.value)
    assert text.startswith(message)
    assert text.endswith("; run python -m example --help for the valid options.")
    assert "\n" not in text


BOXED = (
    "\u256d\u2500 Value error \u2500\u2500\u2500\u2500\u256e\n"
    "\u2502 Error parsing --seed: invalid literal for int() with base 10: 'abc'  \u2502\n"
    "\u2502 \u2500\u2500\u2500\u2500 \u2502\n"
    "\u2502 Argument helptext:  \u2502\n"
    "\u2502     --seed INT      \u2502\n"
    "\u2502 \u2500\u2500\u2500\u2500 \u2502\n"
    "\u2502 For full helptext, see p --help \u2502\n"
    "\u2570\u2500\u2500\u2500\u2500\u256f\n"
)
DASHED = (
    " Unrecognized options               \n"
    " ---------------------------------- \n"
    "  Unrecognized options: --bogus,    \n"
    "  1                                 \n"
    "  ----------------------------------\n"
    "  For full helptext, run p --help   \n"
    "                                    \n"
)


@pytest.mark.parametrize(
    "framed, expected",
    [
        (BOXED, "Error parsing --seed: invalid literal for int() with base 10: 'abc'"),
        (DASHED, "Unrecognized options: --bogus, 1"),
    ],
)
def test_framed_error_text_in_both_frame_styles(framed, expected):
    assert config._framed_error_text(framed) == expected


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as caught:
        config.parse_cli(PRESETS, args=["--help"], prog="python -m example")
    assert caught.value.code == 0
    assert "--learning-rate" in capsys.readouterr().out


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["small"].learning_rate = 1.0


def test_hash_ignores_location_fields_only():
    base = PRESETS["small"]
    assert config.config_hash(base) == config.config_hash(dataclasses.replace(base, data_dir="/x"))
    assert config.config_hash(base) != config.config_hash(dataclasses.replace(base, learning_rate=0.2))
    assert config.config_hash(base) != config.config_hash(dataclasses.replace(base, task=Inner(steps=2)))
