"""Kill a script with SIGKILL part-way through, restart it with the same command, compare.

The kill point is the moment the work folder first contains `files` files. Each script
test draws that number from a generator seeded by the script's name, so the point
differs between scripts but a failure reproduces.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

from tests.conftest import REPO


def kill_point(module, low, high):
    """A file count in [low, high], fixed for `module`."""
    return random.Random(zlib.crc32(module.encode())).randint(low, high)


def relocated(argv, folder):
    """Return a copy of `argv` whose --workdir and --results-dir point under `folder`."""
    argv = list(argv)
    argv[argv.index("--workdir") + 1] = str(Path(folder) / "work")
    argv[argv.index("--results-dir") + 1] = str(Path(folder) / "results")
    return argv


def _count_files(folder):
    # os.walk skips a folder that vanishes while it walks, as orbax's temporary checkpoint
    # folders do when they are renamed, where Path.rglob raises FileNotFoundError.
    return sum(len(files) for _, _, files in os.walk(folder))


def kill_then_restart(module, argv, workdir, *, files, timeout=600, env=None):
    """Run `python -m module argv`, SIGKILL it once `workdir` contains `files` files, rerun it.

    `env` adds variables to both processes' environment.

    Returns:
      (path of the restarted run's report, its stderr).
    """
    command = [sys.executable, "-m", module, *argv]
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)
    deadline = time.time() + timeout
    while _count_files(workdir) < files:
        assert process.poll() is None, f"{module} ended before its work folder held {files} files"
        assert time.time() < deadline, f"{module} wrote fewer than {files} files in {timeout} s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = Path(completed.stdout.strip().splitlines()[-1].split(" ", 3)[-1])
    return report, completed.stderr


def sigint_once_started(module, argv, workdir, *, files, timeout=600):
    """Run `python -m module argv`, send it SIGINT once `workdir` contains `files` files.

    Returns:
      (exit status, stderr) of the interrupted process.
    """
    process = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while _count_files(workdir) < files:
            assert process.poll() is None, f"{module} ended before its work folder held {files} files"
            assert time.time() < deadline, f"{module} wrote fewer than {files} files in {timeout} s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def results(report, experiment):
    """The results.json an experiment wrote beside `report`."""
    return json.loads((Path(report).parent / experiment / "results.json").read_text())
