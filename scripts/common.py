"""Plumbing shared by the experiment scripts: work folders, the command line and errors."""

import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
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


INTERRUPTED_MESSAGE = "interrupted; run the same command again to resume from the last saved work."


def _exit_interrupted(signum, frame):
    del signum, frame
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):
            pass  # a closed stream, or a flush this signal interrupted
    os.write(2, f"\n{INTERRUPTED_MESSAGE}\n".encode())
    os._exit(130)


@contextlib.contextmanager
def exit_on_interrupt():
    """Within the block, Ctrl-C (SIGINT) ends the process with status 130 and a one-line hint.

    A KeyboardInterrupt raised while Python runs a garbage-collection callback, such as
    the one JAX registers, is printed as "Exception ignored" and lost, so a script could
    carry on after Ctrl-C. Exiting at once loses nothing that a rerun does not redo,
    because every script saves its work atomically and resumes after SIGKILL. The signal
    is handled after the running XLA computation returns. Outside the main thread the
    block changes nothing, and the previous handler is restored on leaving it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _remove_if_empty(folder):
    """Remove `folder` if it exists and contains no files, only empty folders, if any."""
    if folder is not None and folder.is_dir() and not any(path.is_file() for path in folder.rglob("*")):
        shutil.rmtree(folder)


def run_standalone(module, presets, run, *, argv=None, description=None):
    """Parse the command line, run one experiment and write its own report.

    Errors in what the user gave (unknown preset, invalid value, missing data) end the
    program with a one-line message on stderr and exit status 2, and leave no empty
    report folder. Ctrl-C ends it with status 130 (see `exit_on_interrupt`).

    Args:
      module: the experiment's module name, e.g. "scripts.approx_cnn".
      presets: preset name -> config.
      run: function (config, run_dir) -> `harness.report.Section`.
      argv: arguments without the program name (default sys.argv[1:]).
      description: shown by --help.
    """
    metrics_lib.setup_logging()
    run_dir = None
    with exit_on_interrupt():
        try:
            config = config_lib.parse_cli(presets, args=argv, prog=f"python -m {module}",
                                          description=description)
            run_dir = Path(report_lib.new_run_dir(config.results_dir, config.preset))
            started = time.perf_counter()
            section = run(config, run_dir)
            section.seconds = time.perf_counter() - started
        except (ValueError, data_lib.DataNotFoundError) as error:
            _remove_if_empty(run_dir)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

        command = command_line(module, config, presets)
        path = report_lib.write_report(run_dir, [section], preset=config.preset, command=command)
    print(f"report written to {path}")
    return path
