"""scripts.posit_cnn end to end at the smoke preset, and its argument checks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import posit_cnn
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir, experiment_workdir):
    root = tmp_path_factory.mktemp("posit_cnn")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
            "--results-dir", str(root / "results")]
    return argv, Path(posit_cnn.main(argv))


def results_of(report):
    return json.loads((Path(report).parent / "posit_cnn" / "results.json").read_text())


def test_report_puts_paper_numbers_beside_ours(smoke_run):
    _, report = smoke_run
    text = report.read_text()
    for label in ("FP32", "posit<16,1>", "posit<16,1> PLAM"):
        assert f"| {label} |" in text
    assert "| 0.9903 -> 0.9898 |" in text
    assert "| 0.7247 -> 0.7251 |" in text
    assert "mean -3.85%, extreme -11.1%" in text
    assert "python -m scripts.posit_cnn --preset smoke" in text


def test_mnist_network_learns_and_posit16_keeps_it(smoke_run):
    _, report = smoke_run
    accuracy = results_of(report)["tasks"]["mnist"]["accuracy"]
    assert accuracy["FP32"]["top1"] > 0.6
    assert abs(accuracy["posit<16,1>"]["top1"] - accuracy["FP32"]["top1"]) <= 0.07


def test_plam_error_statistics_follow_mitchell(smoke_run):
    _, report = smoke_run
    results = results_of(report)
    uniform = results["uniform_plam_error"]
    # Mitchell's error with uniform fractions has a mean of about -3.85% and is never
    # below -1/9. Rounding to posit<16,1> (11 or 12 fraction bits there) adds at most 2**-12.
    assert -0.043 < uniform["mean"] < -0.034
    assert uniform["min"] >= -1 / 9 - 2**-12
    assert uniform["max"] <= 2**-12
    # Network operands include tiny products, whose posits keep few fraction bits, so
    # only the mean is held to Mitchell's range there.
    for task in ("mnist", "cifar10"):
        errors = results["tasks"][task]["plam_error"]
        assert -0.06 < errors["mean"] < -0.02
        assert errors["samples"] > 500


def test_rerun_reuses_cached_results(smoke_run):
    argv, report = smoke_run
    second = posit_cnn.main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


@pytest.mark.parametrize("args, message", [
    (["--formats", "16"], "format '16' is not of the form 'nbits,es'"),
    (["--formats", "40,1"], "nbits=40"),
    (["--accumulate", "float16"], "accumulate='float16'"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.posit_cnn", "--preset", "smoke", *args,
         "--results-dir", str(tmp_path), "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error:")


def test_sigkill_then_restart_matches(smoke_run, tmp_path):
    argv, report = smoke_run
    argv = interrupt.relocated(argv, tmp_path)
    # MNIST alone keeps the test short; its results must equal the uninterrupted run's.
    argv.append("--cifar10.no-enabled")
    files = interrupt.kill_point("scripts.posit_cnn", 3, 30)
    restarted, _ = interrupt.kill_then_restart("scripts.posit_cnn", argv, tmp_path / "work", files=files)
    assert set(results_of(restarted)["tasks"]) == {"mnist"}
    assert results_of(restarted)["tasks"]["mnist"] == results_of(report)["tasks"]["mnist"]
