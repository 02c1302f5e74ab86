"""Every command-line entry point rejects bad input with one line on stderr and status 2."""

import importlib

import pytest

SCRIPTS = ("scripts.approx_cnn", "scripts.approx_analysis", "scripts.posit_cnn", "scripts.cyclic_quant",
           "scripts.align", "scripts.pema", "scripts.reproduce")

# Options that disable MNIST, whose registry copy a machine may hold, so that only the
# missing CIFAR-10 can satisfy the run.
CIFAR_ONLY = {
    "scripts.approx_cnn": ["--mnist.no-enabled"],
    "scripts.approx_analysis": ["--analyses", "deep"],
    "scripts.posit_cnn": ["--mnist.no-enabled"],
    "scripts.cyclic_quant": ["--dataset", "cifar10"],
    "scripts.align": [],
    "scripts.pema": [],
    "scripts.reproduce": ["--only", "scripts.approx_cnn"],
}
MISSING = {"scripts.reproduce": "does not contain mnist/train.parquet",
           "scripts.align": "does not contain mnist/",
           "scripts.pema": "'multi30k' split 'train' was not found"}


def run_main(module, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    stderr = capsys.readouterr().err.strip().splitlines()
    return exit_.value.code, stderr


@pytest.mark.parametrize("module", SCRIPTS)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-such-option", "1"], "Unrecognized options: --no-such-option"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--workdir"], "Missing value for argument '--workdir'"),
    ],
)
def test_bad_option_exits_2_with_one_line(module, args, message, capsys, tmp_path):
    code, stderr = run_main(module, ["--results-dir", str(tmp_path), *args], capsys)
    assert code == 2
    assert stderr[-1].startswith("error: "), stderr
    assert message in stderr[-1], stderr
    assert not any(line.startswith(("Traceback", "\u256d", "\u2502")) for line in stderr), stderr


@pytest.mark.parametrize("module", SCRIPTS)
def test_missing_data_exits_2_with_one_line(module, capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("JAXLAB_DATA_DIR", raising=False)
    argv = ["--preset", "smoke", "--data-dir", str(empty), "--workdir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), *CIFAR_ONLY[module]]
    code, stderr = run_main(module, argv, capsys)
    if module == "scripts.reproduce":
        # The main job runs on after a failed experiment and lists it; its status is 1.
        assert code == 1
        report = next((tmp_path / "results").rglob("REPORT.md")).read_text()
        assert MISSING[module] in report
        return
    assert code == 2
    expected = MISSING.get(module, "does not contain cifar10/")
    assert stderr[-1].startswith("error: "), stderr
    assert expected in stderr[-1], stderr
    # The report folder made for the run is removed, because the run wrote nothing.
    assert list((tmp_path / "results").iterdir()) == []
