"""scripts.cyclic_quant end to end at the smoke preset, and its pieces."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MnistCNN
from scripts import cyclic_quant
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir, experiment_workdir):
    root = tmp_path_factory.mktemp("cyclic_quant")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
            "--results-dir", str(root / "results")]
    report = cyclic_quant.main(argv)
    return argv, Path(report)


def results_of(report):
    return json.loads((Path(report).parent / "cyclic_quant" / "results.json").read_text())


def test_report_puts_paper_beside_ours(smoke_run):
    _, report = smoke_run
    text = report.read_text()
    assert "## Cyclic training with multiple quantization steps" in text
    assert "+5.80 pp (binarized ResNet-18, ImageNet)" in text
    assert "+6.85 pp (binarized ResNet-18, ImageNet)" in text
    for method in ("float32", "direct-1bit", "progressive-1bit", "ctmq1-1bit", "ctmq2-1bit"):
        assert f"| {method} |" in text
    assert "### Deviations from the paper" in text
    assert "python -m scripts.cyclic_quant --preset smoke" in text
    assert (report.parent / "cyclic_quant" / "schedule_top1_1bit.png").stat().st_size > 1000


def test_networks_learn_on_real_data(smoke_run):
    _, report = smoke_run
    results = results_of(report)
    assert sorted(results["seeds"]) == ["0", "1"]
    for seed in results["seeds"].values():
        assert seed["pretrained"]["top1"] > 0.8
        methods = seed["methods"]
        assert methods["float32"][-1]["top1"] > 0.8
        # Ten classes: chance is 0.1. Binarized hidden layers still classify most digits.
        for name in ("direct-1bit", "progressive-1bit", "ctmq1-1bit", "ctmq2-1bit"):
            assert methods[name][-1]["top1"] > 0.5, name


def test_history_follows_schedule(smoke_run):
    _, report = smoke_run
    history = results_of(report)["seeds"]["0"]["methods"]["ctmq2-1bit"]
    assert [record["bits"] for record in history] == [3, 2, 1, None, 3, 2, 1, None, 3, 2, 1]
    assert [record["cycle"] for record in history] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert sum(record["epochs"] for record in history) == pytest.approx(2.0)
    summary = results_of(report)["summary"]
    assert summary["ctmq2-1bit"]["steps"] == 11
    assert len(summary["ctmq2-1bit"]["gain_top1"]) == 2  # mean and spread


def test_rerun_resumes_with_same_results(smoke_run):
    argv, report = smoke_run
    second = cyclic_quant.main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


def test_batch_stats_reestimated_from_batches():
    model = MnistCNN(widths=(4, 8), hidden=16)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    spec = cyclic_quant.data_lib.get_spec("mnist")
    identity = cyclic_quant.cyclic.StepQuantizer(cyclic_quant.cyclic.float_steps(1)[0], lambda v: v)
    step = cyclic_quant.make_batch_stats_step(model, identity, spec)
    stats = cyclic_quant.reestimate_batch_stats(variables, [images[:3], images[3:]], step)

    # The first BatchNorm normalises conv0's output; its statistics are per-channel
    # moments over batch, height and width, averaged over the two batches.
    x = cyclic_quant.train_lib.normalize(images, spec)
    _, captured = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    conv0 = np.asarray(captured["intermediates"]["conv0"]["__call__"][0], np.float64)
    halves = (conv0[:3], conv0[3:])
    expected_mean = np.mean([h.mean(axis=(0, 1, 2)) for h in halves], axis=0)
    expected_var = np.mean([h.var(axis=(0, 1, 2)) for h in halves], axis=0)
    np.testing.assert_allclose(stats["norm0"]["mean"], expected_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["norm0"]["var"], expected_var, rtol=1e-4, atol=1e-6)


def test_methods_share_the_budget():
    config = cyclic_quant.PRESETS["small"]
    chosen = cyclic_quant.methods(config)
    assert list(chosen) == ["float32", "direct-1bit", "progressive-1bit", "ctmq1-1bit", "ctmq2-1bit",
                            "direct-2bit", "ctmq1-2bit"]
    for name, schedule in chosen.items():
        steps = cyclic_quant.schedule_steps(schedule)
        assert sum(s.epochs for s in steps) == pytest.approx(config.budget_epochs), name
    assert [s.bits for s in cyclic_quant.schedule_steps(chosen["ctmq1-2bit"])] == [3, 2, None, 3, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start-bits", "1"], "start_bits=1 must exceed every target"),
        (["--targets", "0"], "target_bits=0 is not a valid bit width"),
        (["--start-bits", "17"], "start_bits=17 is not a valid bit width"),
        (["--weight-quantizer", "lsq"], "weight_quantizer='lsq' is not valid"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.cyclic_quant", "--preset", "smoke", *args, "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error:")


def test_train_step_compiles_once_per_width(data_dir):
    config = cyclic_quant.PRESETS["smoke"]
    train_set = cyclic_quant.data_lib.load_image_dataset("mnist", "train", data_dir=data_dir).take(640)
    compiled = cyclic_quant.CompiledSteps(config, train_set.spec)
    train = cyclic_quant.make_train_function(config, 0, train_set, compiled, offset=0)
    model = cyclic_quant.build_model(config, None)
    variables = jax.device_get(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    step = cyclic_quant.cyclic.Step(index=0, bits=1, epochs=0.4, first_epoch=0.0, cycle=0)
    quantizer = cyclic_quant.cyclic.StepQuantizer(step, cyclic_quant.make_quantizer(config)(1))

    first = train(variables, quantizer, 0.4)
    second = train(variables, quantizer, 0.4)
    # Four steps with four learning rates, twice: one compilation, and the same result.
    assert compiled.train_step(quantizer)._cache_size() == 1
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])


def test_sigkill_then_restart_matches(smoke_run, tmp_path):
    argv, report = smoke_run
    argv = interrupt.relocated(argv, tmp_path)
    # One seed keeps the test short; it must equal seed 0 of the uninterrupted run.
    argv += ["--seeds", "1"]
    files = interrupt.kill_point("scripts.cyclic_quant", 3, 40)
    restarted, _ = interrupt.kill_then_restart("scripts.cyclic_quant", argv, tmp_path / "work", files=files)
    assert set(results_of(restarted)["seeds"]) == {"0"}
    assert results_of(restarted)["seeds"]["0"] == results_of(report)["seeds"]["0"]
