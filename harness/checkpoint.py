"""Orbax checkpoints of one training run, refused when the run's config differs.

A run directory contains `run.json` (the config that produced it and the jaxlab version)
and `checkpoints/` (orbax, one folder per saved step, the newest few kept). Opening a
directory written by another config or version raises ValueError instead of loading
or overwriting it.
"""

import json
import logging
import math
import os
from importlib import metadata
from pathlib import Path

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


def jaxlab_version():
    """The installed jaxlab version, or "unknown" when run from a bare checkout."""
    try:
        return metadata.version("jaxlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def finite_or_none(value):
    """Return `value` with NaN and infinite floats replaced by None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_json_atomic(path, value):
    """Write JSON to `path` through a temporary file, so readers never see half a file.

    NaN and infinities, which JSON has no literal for, are written as null, so any JSON
    parser reads the file.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(finite_or_none(value), indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(temporary, path)


class Checkpointer:
    """Save and restore a pytree every `every` steps in `directory`.

    Args:
      directory: the run's directory; created if missing.
      config: JSON-ready dict of the config; stored on first use and compared after.
      every: save interval in steps (a save can also be forced).
      keep: number of newest checkpoints kept.
    """

    def __init__(self, directory, *, config, every, keep=2):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint interval every={every!r} must be a positive integer.")
        self.every = every
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_identity(config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory / "checkpoints", options=options)

    def _check_identity(self, config):
        identity = {"config": config, "jaxlab_version": jaxlab_version()}
        stamp = self.directory / "run.json"
        if not stamp.exists():
            write_json_atomic(stamp, identity)
            return
        stored = json.loads(stamp.read_text())
        if stored != json.loads(json.dumps(finite_or_none(identity))):
            changed = sorted(
                key
                for key in set(stored.get("config", {})) | set(config)
                if stored.get("config", {}).get(key) != config.get(key)
            )
            raise ValueError(
                f"checkpoint directory {self.directory} belongs to another run "
                f"(differing config fields: {changed or 'none'}; stored version "
                f"{stored.get('jaxlab_version')!r}, running {jaxlab_version()!r}). "
                "Use another --workdir or delete that directory to start afresh."
            )

    def latest_step(self):
        """Return the newest saved step, or None."""
        return self._manager.latest_step()

    def restore(self, like):
        """Restore the newest checkpoint into the structure, shapes and dtypes of `like`."""
        step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        logger.info("restored step %d from %s", step, self.directory)
        return restored

    def save(self, step, tree, *, force=False):
        """Save `tree` at `step` when `step` is a multiple of the interval or `force` is set."""
        saved = self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)
        if saved:
            self._manager.wait_until_finished()
        return saved

    def close(self):
        self._manager.close()
