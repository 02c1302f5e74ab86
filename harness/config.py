"""Experiment configs: frozen keyword-only dataclasses with named presets, parsed by tyro.

Each experiment defines a config dataclass whose first field is `preset` and a mapping
from preset name to a config instance:

    smoke: seconds, used by the tests;
    small: minutes on a laptop CPU, the default;
    paper: the published scale, for a GPU or TPU.

`parse_cli` picks the preset named by `--preset`, then lets every other field be
overridden on the command line (`--learning-rate 0.05`). tyro prints `--help`. Its
framed error for an unknown option or a bad value becomes a one-line `ValueError`, so
that scripts report every input error the same way.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import sys
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
      ValueError: the preset does not exist, an option is unknown or a value is invalid.
      SystemExit: status 0 after printing --help.
    """
    args = list(sys.argv[1:] if args is None else args)
    without_help = [a for a in args if a not in ("-h", "--help")]
    choice, _ = tyro.cli(_PresetChoice, args=without_help, return_unknown_args=True, add_help=False)
    base = select_preset(presets, choice.preset)
    return _cli_one_line_errors(type(base), default=base, args=args, prog=prog, description=description)


def _cli_one_line_errors(config_type, *, prog, **kwargs):
    """Call `tyro.cli`, and raise its framed parse error as a one-line ValueError."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(config_type, prog=prog, **kwargs)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        detail = _framed_error_text(captured.getvalue())
        raise ValueError(f"{detail}; run {prog or 'the program'} --help for the valid options.") from None
    sys.stderr.write(captured.getvalue())
    return parsed


def _framed_error_text(text):
    """Return the error sentence of tyro's framed message.

    The frame is drawn with box characters or, on some consoles, with dashes. Either way
    it contains a title, the error sentence (wrapped over one or more lines), a rule, help
    for the argument, a rule and a pointer to --help. The sentence is the first run of
    text lines after the title.
    """
    frame = " -\u2500\u2502\u256d\u256e\u2570\u256f"
    lines = [line.strip(frame) for line in text.splitlines() if line.strip()]
    sentence = []
    for line in lines[1:]:
        if line:
            sentence.append(line)
        elif sentence:
            break
    return " ".join(sentence) or "invalid command-line arguments"


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
