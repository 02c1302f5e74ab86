"""The main job: run every registered experiment at one preset and write one report.

Run: `python -m scripts.reproduce --preset small`. The report goes to a new folder
`<results-dir>/<timestamp>-<preset>/REPORT.md`, with each experiment's plots beside it.
Work (checkpoints, cached evaluations) goes to `--workdir` and is reused: rerunning the
same command after an interruption resumes where it stopped.

An experiment that fails is listed at the top of the report with its error, the others
still run, and the exit status is 1.
"""

import dataclasses
import importlib
import logging
import sys
import time
import traceback

from harness import config as config_lib
from harness import data as data_lib
from harness import metrics as metrics_lib
from harness import report as report_lib
from scripts import common

logger = logging.getLogger(__name__)

# Experiment modules, in report order. Each defines MODULE, PRESETS and run(config, run_dir).
EXPERIMENTS = (
    "scripts.approx_cnn",
    "scripts.approx_analysis",
    "scripts.posit_cnn",
    "scripts.cyclic_quant",
    "scripts.align",
    "scripts.pema",
    "scripts.tecle",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Options of the main job; each experiment takes its own preset's settings."""

    preset: str = "small"
    """Preset of every experiment: smoke, small or paper."""
    only: tuple[str, ...] = ()
    """Run only these experiments (module names such as scripts.approx_cnn); empty for all."""
    data_dir: str | None = None
    """Folder with <name>/<split>.parquet for every experiment; default JAXLAB_DATA_DIR."""
    workdir: str = "results/work"
    """Folder for checkpoints and cached results."""
    results_dir: str = "results"
    """Folder under which the report folder is created."""


PRESETS = {name: Config(preset=name) for name in config_lib.PRESET_NAMES}


def _experiment_config(module, config):
    base = config_lib.select_preset(module.PRESETS, config.preset)
    return dataclasses.replace(
        base, data_dir=config.data_dir, workdir=config.workdir, results_dir=config.results_dir
    )


def run(config):
    """Run the selected experiments into a new run folder; returns (report path, failures)."""
    unknown = sorted(set(config.only) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiments {unknown} in --only; registered: {list(EXPERIMENTS)}.")
    selected = [name for name in EXPERIMENTS if not config.only or name in config.only]

    run_dir = report_lib.new_run_dir(config.results_dir, config.preset)
    logger.info("writing the report to %s", run_dir)
    sections, failures = [], []
    for name in selected:
        module = importlib.import_module(name)
        experiment_config = _experiment_config(module, config)
        logger.info("running %s (%s preset)", name, config.preset)
        started = time.perf_counter()
        try:
            section = module.run(experiment_config, run_dir)
        except Exception as error:  # one broken experiment must not lose the others' results
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            failures.append((name, f"{type(error).__name__}: {error}"))
            continue
        section.seconds = time.perf_counter() - started
        section.command = common.command_line(name, experiment_config, module.PRESETS)
        sections.append(section)

    command = common.command_line("scripts.reproduce", config, PRESETS)
    path = report_lib.write_report(run_dir, sections, preset=config.preset, command=command,
                                   failures=failures)
    return path, failures


def main(argv=None):
    metrics_lib.setup_logging()
    with common.exit_on_interrupt():
        try:
            config = config_lib.parse_cli(PRESETS, args=argv, prog="python -m scripts.reproduce",
                                          description=__doc__.split("\n\n")[0])
            path, failures = run(config)
        except (ValueError, data_lib.DataNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    print(f"report written to {path}")
    if failures:
        print(f"{len(failures)} experiment(s) failed: {', '.join(n for n, _ in failures)}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
