"""scripts.approx_analysis end to end at the smoke preset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import approx_analysis
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def analysis_run(tmp_path_factory, data_dir, experiment_workdir):
    results_dir = tmp_path_factory.mktemp("analysis_results")
    report = approx_analysis.main(["--preset", "smoke", "--data-dir", data_dir, "--workdir",
                                   str(experiment_workdir), "--results-dir", str(results_dir)])
    report = Path(report)
    results = json.loads((report.parent / "approx_analysis" / "results.json").read_text())
    return report, results


def test_every_analysis_reports(analysis_run):
    report, results = analysis_run
    text = report.read_text()
    for heading in ("0. Relative error", "1. Dot-product relative error", "2. MNIST CNN top-1",
                    "3. Accumulation, mnist", "4. Bias, mnist", "5. CIFAR-10 top-1",
                    "6. Character-level transformer"):
        assert heading in text
    assert results["skipped"] == {}
    assert (report.parent / "approx_analysis" / "error_histograms.png").stat().st_size > 1000
    assert (report.parent / "approx_analysis" / "fan_in.png").stat().st_size > 1000


def test_error_statistics_match_known_values(analysis_run):
    _, results = analysis_run
    rows = {row["label"]: row for row in results["errors"]["rows"]}
    assert -0.0395 < rows["Mitch-w23"]["sampled"]["mean"] < -0.0375
    assert rows["Mitch-w6"]["grid"]["min"] == pytest.approx(-1 / 9, abs=1e-7)
    assert rows["Trunc-w4"]["grid"]["max"] == 0.0  # exact on its own grid
    assert rows["Mitch-w8"]["grid"] is None  # beyond the smoke grid limit


def test_fan_in_spread_shrinks(analysis_run):
    _, results = analysis_run
    spread = results["fan_in"]["results"]["Mitch-w6"]["std"]
    assert spread[-1] < spread[0] / 4
    mean = results["fan_in"]["results"]["Mitch-w6"]["mean"]
    assert -0.06 < mean[-1] < -0.035


def test_language_model_learns(analysis_run):
    _, results = analysis_run
    lm = results["language_model"]
    assert lm["perplexity"]["FP32"] < 0.95 * lm["unigram"]


def test_scale_correction_is_calibrated(analysis_run):
    _, results = analysis_run
    bias = results["bias"]["mnist"]
    assert set(bias) == {"Mitch-w6 biased", "Mitch-w6 unbiased", "Mitch-w6 biased + per-layer scale"}
    assert all(0 <= value <= 1 for value in bias.values())


@pytest.mark.parametrize("args,message", [(["--analyses", "magic"], "unknown analyses ['magic']"),
                                          (["--accumulations", "fp16"], "accumulation='fp16'")])
def test_bad_analysis_options_exit_2(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.approx_analysis", "--preset", "smoke", *args,
         "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert message in completed.stderr


def test_sigkill_then_restart_matches(analysis_run, data_dir, tmp_path):
    _, results = analysis_run
    # The batch-norm analysis trains networks with and without batch norm, so a kill can
    # land in training, in evaluation or between them.
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), "--analyses", "batch_norm"]
    files = interrupt.kill_point("scripts.approx_analysis", 3, 30)
    restarted, _ = interrupt.kill_then_restart("scripts.approx_analysis", argv, tmp_path / "work", files=files)
    again = interrupt.results(restarted, "approx_analysis")
    assert again["batch_norm"] == results["batch_norm"]
