"""Plumbing shared by the experiment scripts: work folders, the command line and errors."""

import logging
import shlex
import sys
import time
from pathlib import Path

from harness import config as config_lib
from harness import data as data_lib
from harness import metrics as metrics_lib
from harness import report as report_lib

logger = logging.getLogger(__name__)


def experiment_dir(config, experiment):
    """Folder for an experiment's checkpoints and cached results under `config.workdir`.

    Experiments key their subfolders by the config fields that affect each stage, so a
    rerun of the same command finds and resumes its earlier work.
    """
    return Path(config.workdir) / experiment


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def command_line(module, config, presets):
    """Write the command that reruns `module` with `config`: its preset plus overridden fields."""
    parts = ["python", "-m", module, "--preset", config.preset]
    ours = _flatten(config_lib.to_dict(config))
    base = _flatten(config_lib.to_dict(presets[config.preset]))
    for name, value in ours.items():
        if name == "preset" or base.get(name) == value:
            continue
        parts.append("--" + name.replace("_", "-"))
        values = value if isinstance(value, list) else [value]
        parts.extend(str(v) for v in values)
    return " ".join(shlex.quote(p) for p in parts)


def run_standalone(module, presets, run, *, argv=None, description=None):
    """Parse the command line, run one experiment and write its own report.

    Errors in what the user gave (unknown preset, invalid value, missing data) end the
    program with a one-line message on stderr and exit status 2.

    Args:
      module: the experiment's module name, e.g. "scripts.approx_cnn".
      presets: preset name -> config.
      run: function (config, run_dir) -> `harness.report.Section`.
      argv: arguments without the program name (default sys.argv[1:]).
      description: shown by --help.
    """
    metrics_lib.setup_logging()
    try:
        config = config_lib.parse_cli(presets, args=argv, prog=f"python -m {module}",
                                      description=description)
        run_dir = report_lib.new_run_dir(config.results_dir, config.preset)
        started = time.perf_counter()
        section = run(config, run_dir)
        section.seconds = time.perf_counter() - started
    except (ValueError, data_lib.DataNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

    command = command_line(module, config, presets)
    path = report_lib.write_report(run_dir, [section], preset=config.preset, command=command)
    print(f"report written to {path}")
    return path
