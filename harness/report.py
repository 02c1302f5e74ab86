"""Run folders and the Markdown report of the main job.

Each invocation of the main job writes into a new folder `<root>/<timestamp>-<preset>`
and never into an existing one. Each experiment contributes a `Section`: what the paper
published beside what we measured, plots, the exact command and config, and the list of
deviations from the paper.
"""

import dataclasses
import datetime
import json
import platform
from pathlib import Path

import jax


def new_run_dir(root, preset, *, now=None):
    """Create and return a fresh folder `<root>/<YYYYmmdd-HHMMSS>-<preset>`.

    A folder of that name that already exists is left alone; a numeric suffix is added.
    """
    now = now or datetime.datetime.now()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{now:%Y%m%d-%H%M%S}-{preset}"
    for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
        candidate = root / (base + suffix)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a new run folder under {root} named {base}-N")


def markdown_table(headers, rows):
    """Format a GitHub-flavoured Markdown table; cells are converted with str()."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


@dataclasses.dataclass(kw_only=True)
class Section:
    """One experiment's part of the report.

    Attributes:
      title: heading.
      summary: Markdown paragraphs: what was run and what our numbers show.
      comparison: Markdown table, published result beside ours.
      tables: further Markdown tables (title -> table).
      plots: (caption, path relative to the run folder) pairs.
      command: the command that reproduces this section alone.
      config: the config as a dict.
      deviations: differences from the paper's set-up.
      seconds: wall time of the experiment.
    """

    title: str
    summary: str
    comparison: str
    tables: dict = dataclasses.field(default_factory=dict)
    plots: list = dataclasses.field(default_factory=list)
    command: str = ""
    config: dict = dataclasses.field(default_factory=dict)
    deviations: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_markdown(self):
        parts = [f"## {self.title}", "", self.summary.strip(), "", "### Published and measured", "",
                 self.comparison.strip(), ""]
        for name, table in self.tables.items():
            parts += [f"### {name}", "", table.strip(), ""]
        for caption, path in self.plots:
            parts += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        if self.deviations:
            parts += ["### Deviations from the paper", ""]
            parts += [f"- {item}" for item in self.deviations] + [""]
        parts += ["### Command and config", "", "```", self.command, "```", "",
                  "```json", json.dumps(self.config, indent=2, sort_keys=True), "```", "",
                  f"Wall time: {self.seconds / 60:.1f} min.", ""]
        return "\n".join(parts)


def machine_description():
    """Describe the host and JAX backend in one line, for reproducibility."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"{platform.node() or 'host'}: {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, JAX {jax.__version__} on "
        f"{len(devices)} x {', '.join(kinds)}"
    )


def write_report(run_dir, sections, *, preset, command, failures=()):
    """Write `REPORT.md` in `run_dir` and return its path.

    Args:
      run_dir: the run folder from `new_run_dir`.
      sections: `Section`s in order.
      preset: preset name.
      command: the command that produced the whole report.
      failures: (experiment name, error message) pairs for experiments that failed.
    """
    run_dir = Path(run_dir)
    header = [
        f"# jaxlab report ({preset} preset)",
        "",
        f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by `{command}`.",
        "",
        f"Machine: {machine_description()}.",
        "",
    ]
    if failures:
        header += ["## Experiments that failed", ""]
        header += [f"- **{name}**: {message}" for name, message in failures] + [""]
    body = [section.to_markdown() for section in sections]
    path = run_dir / "REPORT.md"
    path.write_text("\n".join(header + body))
    return path
