"""Metrics as JSON lines, and logging set-up for scripts."""

import json
import logging
import math
import sys
from pathlib import Path


def setup_logging(level=logging.INFO):
    """Send jaxlab's log records to stderr with timestamps; quiet noisy libraries."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "orbax", "jax._src", "datasets", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _clean(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSON-lines file of `{"step": int, name: value, ...}` records."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step, **values):
        record = {"step": int(step), **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self):
        """All records, oldest first; a torn last line from a crash is dropped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, step):
        """Drop records past `step`, so a resumed run does not log those steps twice."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept))
        temporary.replace(self.path)
