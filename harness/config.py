"""Experiment configs: frozen keyword-only dataclasses with named presets, parsed by tyro.

Each experiment defines a config dataclass whose first field is `preset` and a mapping
from preset name to a config instance:

    smoke: seconds, used by the tests;
    small: minutes on a laptop CPU, the default;
    paper: the published scale, for a GPU or TPU.

`parse_cli` picks the preset named by `--preset`, then lets every other field be
overridden on the command line (`--learning-rate 0.05`). tyro prints `--help`; an
unknown option or a value that does not parse raises `CommandLineError` with a one-line
message, which the scripts print before exiting with status 2.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import re
from typing import Mapping, Sequence, TypeVar

import tyro

PRESET_NAMES = ("smoke", "small", "paper")
# Fields that locate files rather than change results, so they stay out of the config hash.
LOCATION_FIELDS = ("data_dir", "results_dir", "workdir")

ConfigT = TypeVar("ConfigT")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _PresetChoice:
    preset: str = "small"


def select_preset(presets: Mapping[str, ConfigT], name: str) -> ConfigT:
    """Return the config of preset `name`; raise ValueError naming the valid presets."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets are {tuple(presets)}.")
    return presets[name]


def parse_cli(
    presets: Mapping[str, ConfigT],
    *,
    args: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> ConfigT:
    """Parse `--preset NAME` and field overrides into a config.

    Args:
      presets: preset name -> config instance; all of one dataclass type.
      args: command-line arguments without the program name (default sys.argv[1:]).
      prog, description: shown by --help.

    Raises:
      ValueError: the preset does not exist.
      CommandLineError: an unknown option or a value that does not parse.
      SystemExit: help was printed (status 0).
    """
    import sys

    args = list(sys.argv[1:] if args is None else args)
    without_help = [a for a in args if a not in ("-h", "--help")]
    choice, _ = _quiet_cli(_PresetChoice, prog, args=without_help, return_unknown_args=True, add_help=False)
    base = select_preset(presets, choice.preset)
    if len(without_help) < len(args):
        return tyro.cli(type(base), default=base, args=args, prog=prog, description=description)
    return _quiet_cli(type(base), prog, default=base, args=args, prog=prog, description=description)


class CommandLineError(ValueError):
    """An option or value on the command line that the config does not accept."""


def _quiet_cli(cls, program, **kwargs):
    """tyro.cli, with its boxed error message turned into a one-line CommandLineError."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(cls, **kwargs)
    except SystemExit as exit_:
        if not exit_.code:
            raise
        raise CommandLineError(_one_line(captured.getvalue(), program)) from None


def _one_line(text, program):
    """The message line of tyro's error panel, plus where to find the options.

    The panel is a title, a separator, the message and a pointer to --help, drawn with
    box characters on a terminal and with plain dashes elsewhere.
    """
    frame = "\u2500\u2502\u256d\u256e\u256f\u2570-"
    rows = [line.strip().strip(frame).strip() for line in text.splitlines()]
    rows = [row for row in rows if row.strip(frame + " ") and not row.startswith("For full helptext")]
    message = rows[1] if len(rows) > 1 else (rows[0] if rows else "invalid command-line arguments")
    return f"{message.rstrip('.')}; run `{program or 'the script'} --help` for the options."


def to_dict(config) -> dict:
    """Convert a config dataclass or dict to a JSON-ready dict (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def config_hash(config, *, exclude: Sequence[str] = LOCATION_FIELDS) -> str:
    """Hash every field that changes results into a short, stable hex string."""
    fields = {k: v for k, v in to_dict(config).items() if k not in exclude}
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
