"""Test-wide settings: key-reuse checking, no hub access, a private cache, the data mirror."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _session_folder(variable, prefix):
    """Point `variable` at a new temporary folder, removed at exit, unless it is already set."""
    if variable not in os.environ:
        folder = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ[variable] = folder


# Set before jax or datasets are imported by any test module.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_session_folder("JAXLAB_CACHE_DIR", "jaxlab-test-cache-")
# A persistent compilation cache for the session: the script subprocesses of the
# kill-and-restart tests load the programs this process compiled instead of compiling
# them again, which saves several seconds per test.
_session_folder("JAX_COMPILATION_CACHE_DIR", "jaxlab-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_debug_key_reuse", True)

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir():
    """The data mirror: JAXLAB_DATA_DIR, else ../shared/data beside the checkout."""
    configured = os.environ.get("JAXLAB_DATA_DIR")
    path = Path(configured) if configured else MIRROR
    if not (path / "mnist" / "train.parquet").is_file():
        raise FileNotFoundError(
            f"the tests need the data mirror with mnist/ and cifar10/; {path} has no "
            "mnist/train.parquet. Set JAXLAB_DATA_DIR to the mirror."
        )
    return str(path)


@pytest.fixture(scope="session")
def experiment_workdir(tmp_path_factory):
    """A work folder shared by the end-to-end script tests, so trained models are reused."""
    return tmp_path_factory.mktemp("work")
