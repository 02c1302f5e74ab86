"""Experiment configs: frozen keyword-only dataclasses with named presets, parsed by tyro.

Each experiment defines a config dataclass whose first field is `preset` and a mapping
from preset name to a config instance:

    smoke: seconds, used by the tests;
    small: minutes on a laptop CPU, the default;
    paper: the published scale, for a GPU or TPU.

`parse_cli` picks the preset named by `--preset`, then lets every other field be
overridden on the command line (`--learning-rate 0.05`). tyro prints `--help`, and it
rejects unknown options and bad values with exit status 2.
"""

import dataclasses
import hashlib
import json
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
      SystemExit: tyro rejected an option or value (status 2) or printed help (status 0).
    """
    import sys

    args = list(sys.argv[1:] if args is None else args)
    without_help = [a for a in args if a not in ("-h", "--help")]
    choice, _ = tyro.cli(_PresetChoice, args=without_help, return_unknown_args=True, add_help=False)
    base = select_preset(presets, choice.preset)
    return tyro.cli(type(base), default=base, args=args, prog=prog, description=description)


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
