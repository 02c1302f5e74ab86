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
        (["--learning-rate", "fast"], "Error parsing --learning-rate"),
        (["--no-such-option", "1"], "Unrecognized options: --no-such-option"),
    ],
)
def test_bad_values_and_unknown_options_raise_one_line(args, message, capsys):
    with pytest.raises(config.CommandLineError) as caught:
        config.parse_cli(PRESETS, args=args, prog="train")
    assert message in str(caught.value)
    assert "run `train --help` for the options" in str(caught.value)
    assert "\n" not in str(caught.value)
    # tyro's own panel is swallowed, so the caller prints the only message.
    assert capsys.readouterr().err == ""


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["small"].learning_rate = 1.0


def test_hash_ignores_location_fields_only():
    base = PRESETS["small"]
    assert config.config_hash(base) == config.config_hash(dataclasses.replace(base, data_dir="/x"))
    assert config.config_hash(base) != config.config_hash(dataclasses.replace(base, learning_rate=0.2))
    assert config.config_hash(base) != config.config_hash(dataclasses.replace(base, task=Inner(steps=2)))
