"""scripts.approx_cnn end to end at the smoke preset, including a kill and restart."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import approx_cnn
from tests.conftest import REPO
from tests.scripts import interrupt


def run_main(argv):
    return approx_cnn.main(argv)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir, experiment_workdir):
    root = tmp_path_factory.mktemp("approx_cnn")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
            "--results-dir", str(root / "results")]
    report = run_main(argv)
    return argv, Path(report), root


def results_of(report):
    return json.loads((Path(report).parent / "approx_cnn" / "results.json").read_text())


def test_report_has_every_multiplier_and_plot(smoke_run):
    _, report, _ = smoke_run
    text = report.read_text()
    for label in ("FP32", "bf16", "bf16-trunc", "Mitch-w6", "Mitch-w6-unbiased"):
        assert f"| {label} |" in text
    assert "within 0.2% (ResNet, Inception-v4, ImageNet)" in text
    assert (report.parent / "approx_cnn" / "mnist_accuracy_vs_w.png").stat().st_size > 1000
    assert (report.parent / "approx_cnn" / "cifar10_accuracy_vs_w.png").exists()
    assert "python -m scripts.approx_cnn --preset smoke" in text


def test_mnist_network_learns(smoke_run):
    _, report, _ = smoke_run
    mnist = results_of(report)["mnist"]
    assert mnist["accuracy"]["FP32"]["top1"] > 0.7
    assert mnist["test_examples"] == 64


def test_error_statistics_respect_mitchell_bounds(smoke_run):
    _, report, _ = smoke_run
    for task in ("mnist", "cifar10"):
        errors = results_of(report)[task]["errors"]
        w6 = errors["Mitch-w6"]
        # Biased Mitch-w never overestimates; truncating each operand to 6 fraction bits
        # costs at most a factor (1 - 2**-6) each on top of Mitchell's 8/9.
        assert w6["max"] <= 0
        assert w6["min"] >= 8 / 9 * (1 - 2**-6) ** 2 - 1
        assert -0.08 < w6["mean"] < -0.02
        assert abs(errors["FP32"]["max"]) < 1e-7
        assert errors["bf16"]["max"] <= 2**-8 * 1.01 * 2  # two roundings of at most 2**-9 each


def test_rerun_resumes_and_reproduces_results(smoke_run, caplog):
    argv, report, _ = smoke_run
    second = run_main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


def test_sigkill_then_restart_matches(smoke_run, data_dir, tmp_path):
    argv, report, _ = smoke_run
    argv = interrupt.relocated(argv, tmp_path)
    # MNIST alone keeps the test short; its results must equal the uninterrupted run's.
    command = [sys.executable, "-m", "scripts.approx_cnn", *argv, "--cifar10.no-enabled"]

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ))
    deadline = time.time() + 300
    checkpoints = tmp_path / "work" / "approx_cnn"
    while time.time() < deadline and not list(checkpoints.glob("mnist-*/train/checkpoints/10")):
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resuming at step" in completed.stderr
    restarted = Path(completed.stdout.strip().splitlines()[-1].split(" ", 3)[-1])
    assert set(results_of(restarted)) == {"mnist"}
    assert results_of(restarted)["mnist"] == results_of(report)["mnist"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "smoke", "--widths", "0"], "w=0"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.approx_cnn", *args, "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error:")


def test_unknown_option_is_rejected():
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.approx_cnn", "--preset", "smoke", "--no-such-flag"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert "--no-such-flag" in completed.stderr + completed.stdout
