"""scripts.align end to end at the smoke preset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import align as align_script
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir, experiment_workdir):
    root = tmp_path_factory.mktemp("align")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
            "--results-dir", str(root / "results")]
    report = align_script.main(argv)
    return argv, Path(report)


def results_of(report):
    return json.loads((Path(report).parent / "align" / "results.json").read_text())


def test_report_sets_published_beside_measured(smoke_run):
    _, report = smoke_run
    text = report.read_text()
    assert "## Scalable oversight: weak-to-strong generalization" in text
    assert "| PGR, confidence loss, largest gap | about 80% (NLP tasks) |" in text
    assert "0.57 to 0.67 (AlexNet supervising DINO models, ImageNet)" in text
    assert "| debate judge accuracy, 4 pixels: random -> debate | 48.2% -> 85.2% |" in text
    assert "| debate judge accuracy, 6 pixels: random -> debate | 59.4% -> 88.9% |" in text
    assert "### MNIST: iterative teacher-student (confidence loss)" in text
    assert "### MNIST: bootstrapping" in text
    assert "python -m scripts.align --preset smoke" in text
    for name in ("mnist_pgr.png", "mnist_generations.png", "cifar10_pgr.png", "debate.png"):
        assert (report.parent / "align" / name).stat().st_size > 1000


def test_ladders_learn_and_record_pgr(smoke_run):
    _, report = smoke_run
    mnist = results_of(report)["ladders"]["mnist"]
    assert mnist["weak"]["linear"] > 0.5
    assert mnist["ceiling"]["cnn"] > mnist["weak"]["linear"]
    assert len(mnist["pairs"]) == 3
    assert [row["model"] for row in mnist["generations"]] == ["linear", "mlp", "cnn"]
    cifar = results_of(report)["ladders"]["cifar10"]
    assert cifar["weak"]["linear"] > 0.15  # chance is 0.1


def test_debate_results_for_both_pixel_counts(smoke_run):
    _, report = smoke_run
    results = results_of(report)["debate"]
    assert set(results) == {"4", "6"}
    for entry in results.values():
        assert entry["random_acc"] > 0.2
        assert entry["debate_examples"] == 16
    # With the smoke judge and 4 simulations per move, debate already helps at 6 pixels.
    assert results["6"]["debate_acc"] > results["6"]["random_acc"]


def test_rerun_reuses_work_and_reproduces(smoke_run):
    argv, report = smoke_run
    second = align_script.main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mnist.models", "linear", "transformer"], "unknown model names ['transformer']"),
        (["--debate.pixels", "0"], "pixels=0 is outside the valid range 1 to 784"),
        (["--cifar10.bootstrap-via", "linear"], "cifar10.bootstrap_via='linear' must be a middle rung"),
        (["--no-such-option", "1"], "Unrecognized options: --no-such-option, 1"),
        (["--seed", "abc"], "Error parsing --seed: invalid literal for int()"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.align", "--preset", "smoke", *args, "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_sigkill_then_restart_matches(smoke_run, tmp_path):
    argv, report = smoke_run
    argv = interrupt.relocated(argv, tmp_path)
    # The MNIST ladder alone keeps the test short; it must equal the uninterrupted run's.
    argv += ["--cifar10.no-enabled", "--debate.no-enabled"]
    files = interrupt.kill_point("scripts.align", 20, 170)
    restarted, _ = interrupt.kill_then_restart("scripts.align", argv, tmp_path / "work", files=files)
    assert set(results_of(restarted)["ladders"]) == {"mnist"}
    assert "debate" not in results_of(restarted)
    assert results_of(restarted)["ladders"]["mnist"] == results_of(report)["ladders"]["mnist"]
