"""The main job at the smoke preset, and its argument checks."""

import subprocess
import sys
from pathlib import Path

from scripts import reproduce
from tests.conftest import REPO


def test_reproduce_smoke_writes_report(tmp_path, data_dir, experiment_workdir, capsys):
    reproduce.main(["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
                    "--results-dir", str(tmp_path / "results")])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("report written to ")
    report = Path(printed.removeprefix("report written to "))
    assert report.parent.parent == tmp_path / "results"
    assert report.parent.name.endswith("-smoke")
    text = report.read_text()
    assert "# jaxlab report (smoke preset)" in text
    assert "## Approximate multiplication in CNN inference" in text
    assert "## Approximate multiplication: why it works" in text
    assert "python -m scripts.approx_cnn --preset smoke --data-dir" in text
    assert "## Posit inference with PLAM" in text
    assert "python -m scripts.posit_cnn --preset smoke --data-dir" in text
    assert "## Cyclic training with multiple quantization steps" in text
    assert "python -m scripts.cyclic_quant --preset smoke --data-dir" in text
    assert "## Scalable oversight: weak-to-strong generalization" in text
    assert "python -m scripts.align --preset smoke --data-dir" in text
    assert "## PEMA: plug-in external memory adaptation" in text
    assert "python -m scripts.pema --preset smoke --data-dir" in text
    assert "## TeCLE: temporally correlated latent exploration" in text
    assert "Experiments that failed" not in text


def test_unknown_experiment_is_rejected(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.reproduce", "--preset", "smoke", "--only", "scripts.nope",
         "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert "unknown experiments ['scripts.nope']" in completed.stderr
    assert list(tmp_path.iterdir()) == []
