"""Data-parallel training on 8 simulated CPU devices matches one device."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_eight_devices_match_one(data_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    completed = subprocess.run(
        [sys.executable, "-m", "tests.harness.mesh_check", data_dir],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["replicated"]
    assert result["max_difference"] < 1e-5
    assert "cannot be split evenly over 8 devices" in result["uneven_batch_error"]

