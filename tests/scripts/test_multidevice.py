"""Every training script trains the same on 8 simulated CPU devices as on 1.

`multidevice_check` runs a few training steps of each script in two processes, one
with 8 CPU devices and one with 1, and each run uses the scripts' default mesh of all
devices. The two processes run at the same time, because each spends most of its time
compiling on one core.

Tolerance: float32 has a machine epsilon of 1.2e-7. Splitting a batch over 8 devices
changes only the order of the additions in the gradient all-reduce and in batch
statistics. The round-off of a sum scales with the magnitude of its terms, not with
the result, so the bound is normwise: the largest difference in an array must stay
within RTOL times that array's largest magnitude, plus ATOL.

- RTOL = 1e-5 is about 80 units in the last place. That leaves room for a few steps of
  reordered sums, which Adam's normalisation can amplify.
- ATOL = 1e-6 bounds arrays that are round-off themselves. A bias ahead of a batch norm
  has a zero exact gradient, so it stays within about 1e-8 of zero. ATOL is RTOL times
  0.1, the order of the weights whose sums leave that round-off.

Training the approx_cnn piece on one device's share of each batch instead moved every
array by more than 1% of its scale, three orders of magnitude above the bound.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.scripts.multidevice_check import PIECES

RTOL = 1e-5
ATOL = 1e-6
DEVICE_COUNTS = (8, 1)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """{device count: (printed summary, folder of the saved results)} of both processes."""
    started = {}
    for count in DEVICE_COUNTS:
        out_dir = tmp_path_factory.mktemp(f"devices{count}")
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.scripts.multidevice_check", data_dir, str(out_dir)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started[count] = (process, out_dir)
    # Both processes finish (or are killed) before any assert, so none outlives the test.
    finished = {}
    for count, (process, out_dir) in started.items():
        try:
            finished[count] = process.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            finished[count] = process.communicate()
    results = {}
    for count, (process, out_dir) in started.items():
        stdout, stderr = finished[count]
        assert process.returncode == 0, f"{count} devices:\n{stderr[-3000:]}"
        results[count] = (json.loads(stdout.strip().splitlines()[-1]), out_dir)
    return results


def test_processes_see_expected_devices(runs):
    for count in DEVICE_COUNTS:
        assert runs[count][0]["devices"] == count


@pytest.mark.parametrize("script", list(PIECES))
def test_batches_split_over_devices(runs, script):
    # Every batch the script placed with harness.mesh.shard_batch spans all devices.
    assert runs[8][0]["batch_devices"][script] == [8]
    assert runs[1][0]["batch_devices"][script] == [1]


@pytest.mark.parametrize("script", list(PIECES))
def test_eight_devices_match_one(runs, script):
    with np.load(runs[8][1] / f"{script}.npz") as eight, np.load(runs[1][1] / f"{script}.npz") as one:
        assert sorted(eight.files) == sorted(one.files)
        assert one.files, f"{script} saved no results"
        for name in one.files:
            expected, actual = one[name].astype(np.float64), eight[name].astype(np.float64)
            # PPO metrics are NaN where no episode ended in an update.
            finite = np.isfinite(expected)
            assert np.array_equal(finite, np.isfinite(actual)), f"{script} {name}: NaN at other entries"
            difference = np.max(np.abs(actual - expected)[finite], initial=0.0)
            scale = np.max(np.abs(expected)[finite], initial=0.0)
            bound = RTOL * scale + ATOL
            assert difference <= bound, f"{script} {name}: difference {difference:.3g} exceeds {bound:.3g}"
