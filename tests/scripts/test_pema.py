"""scripts.pema end to end at the smoke preset, its pieces, and its errors on bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters import pema as pema_lib
from models import llama
from scripts import pema
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir, experiment_workdir):
    root = tmp_path_factory.mktemp("pema")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(experiment_workdir),
            "--results-dir", str(root / "results")]
    report = pema.main(argv)
    return argv, Path(report)


# Fields of results.json that hold wall-clock seconds or resident memory in MiB.
MEASUREMENTS = ("seconds", "seconds_per_step", "peak_rss_mib", "rss_before_mib")


def results_of(report):
    return json.loads((Path(report).parent / "pema" / "results.json").read_text())


def test_report_puts_paper_beside_ours(smoke_run):
    _, report = smoke_run
    text = report.read_text()
    assert "## PEMA: plug-in external memory adaptation" in text
    assert "| sacreBLEU: PEMA above LoRA and kNN-LM | yes, on WMT22 EN→DE and GYAFC |" in text
    assert "| training memory of PEMA relative to LoRA | about 1/10 |" in text
    for method in pema.METHODS:
        assert f"| {method} |" in text, method
    for method in pema.COST_METHODS:
        assert f"| {method} | " in text, method
    assert "### Deviations from the paper" in text
    assert "python -m scripts.pema --preset smoke" in text


def test_every_method_is_scored(smoke_run):
    _, report = smoke_run
    results = results_of(report)
    scores = results["tasks"]["en-de"]["methods"]
    assert sorted(scores) == sorted(pema.METHODS)
    for method, values in scores.items():
        assert 0.0 <= values["bleu"] <= 100.0, method
        assert 0.0 <= values["chrf"] <= 100.0, method
        assert len(values["examples"]) == 3, method
    for method in pema.COST_METHODS:
        cost = results["costs"][method]
        assert cost["peak_rss_mib"] > 0, method
        assert cost["seconds_per_step"] > 0, method
    assert results["costs"]["pema"]["trainable"] == 2 * 16 * 32  # A [r, d] and B_pd [d, r]


def test_adapters_learn_on_real_data(smoke_run):
    _, report = smoke_run
    task = results_of(report)["tasks"]["en-de"]
    for stage in ("stage1", "stage2"):
        history = task["pema_history"][stage]
        first = history["history"][0]["validation_loss"]
        best = history["history"][history["best_epoch"]]["validation_loss"]
        assert best < 0.8 * first, stage
    losses = task["lora_losses"]
    assert len(losses) == pema.PRESETS["smoke"].lora_steps
    assert np.mean(losses[-3:]) < 0.8 * losses[0]


def test_rerun_resumes_with_same_results(smoke_run):
    argv, report = smoke_run
    second = pema.main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


def tiny_model(vocab_size=11):
    config = pema.tiny_config(vocab_size)
    model = llama.Llama(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return config, model, params


def test_frozen_head_matches_model_head():
    config, model, params = tiny_model()
    hidden = jax.random.normal(jax.random.key(1), (3, config.hidden_size))
    expected = model.apply({"params": params}, hidden, method=llama.Llama.head)
    got = pema_lib.head_logits(pema.frozen_head(config, params), hidden)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_memory_holds_model_states(tmp_path):
    config, model, params = tiny_model()
    apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    examples = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9])]
    memory = pema_lib.build_memory(lambda tokens: apply(tokens)[1], examples, tmp_path, pad_multiple=4)
    np.testing.assert_array_equal(memory.tokens, [4, 5, 7, 8, 9])
    _, hidden, _ = apply(jnp.asarray([[1, 2, 3, 4, 5]]))
    np.testing.assert_allclose(memory.hidden[:2], hidden[0, 2:4], rtol=1e-5, atol=1e-5)


def test_lora_non_finite_loss_names_step():
    _, model, params = tiny_model()
    encoded = SimpleNamespace(contexts=[[1, 2, 3], [4, 5], [6, 7, 8, 9]], targets=[[5, 6], [7], [1, 2]])
    # A learning rate of 1e30 overflows the merged weights after the first update.
    config = dataclasses.replace(pema.PRESETS["smoke"], lora_learning_rate=1e30, lora_steps=6, lora_batch_size=2)
    with pytest.raises(FloatingPointError, match=r"LoRA: the loss became nan at step 2\. No factors were saved\."):
        pema.train_lora(model, params, encoded, config)


def test_sequence_batch_masks_targets():
    tokens, labels, mask = pema.sequence_batch([[1, 2, 3], [4]], [[5, 6], [7]], [0, 1], 6)
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 5, 0, 0], [4, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(labels[0, :4], [2, 3, 5, 6])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]])


def test_prompt_ends_where_output_begins():
    text = pema.prompt_text("en-de", [("A dog.", "Ein Hund.")], "A cat.")
    assert text == "Translate English to German.\nEnglish: A dog.\nGerman: Ein Hund.\nEnglish: A cat.\nGerman:"
    assert pema.target_text("Eine Katze.") == " Eine Katze.\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pema-rank", "0"], "pema_rank=0 is not valid"),
        (["--lora-rank", "-1"], "lora_rank=-1 is not valid"),
        (["--tasks", "en-xx"], "task 'en-xx' is not valid"),
        (["--checkpoint", "weights.bin"], "is not a supported checkpoint format"),
        (["--shots", "40"], "exceed the model's context of 1024 tokens"),
        (["--train-pairs", "0"], "the memory would be empty"),
    ],
)
def test_bad_input_exits_2(args, message, tmp_path, data_dir, capsys):
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--workdir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), "--model", "smollm2" if "--checkpoint" in args else "tiny",
            *args]
    with pytest.raises(SystemExit) as exit_info:
        pema.main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr
    assert stderr.strip().splitlines()[-1].startswith("error:")


def test_uneven_device_batch_rejected(monkeypatch):
    # The small preset trains LoRA on batches of 4, which 8 devices cannot share.
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with pytest.raises(ValueError, match=r"lora_batch_size=4 cannot be split evenly over 8 devices"):
        pema.validate(pema.PRESETS["small"])
    config = dataclasses.replace(pema.PRESETS["small"], lora_batch_size=8, pema_batch_size=12)
    with pytest.raises(ValueError, match=r"pema_batch_size=12 cannot be split evenly over 8 devices"):
        pema.validate(config)
    pema.validate(dataclasses.replace(config, pema_batch_size=16))


def _is_running(pid):
    """Return whether process `pid` exists and is not a zombie, from /proc/<pid>/stat."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_measuring_child_ends_with_its_parent():
    child = ("import os, time; from scripts import pema; pema._exit_with_parent(os.getppid()); "
             "print('ready', flush=True); time.sleep(120)")
    parent = (f"import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print(child.pid, flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = int(process.stdout.readline())
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.time() + 10
        while _is_running(child_pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _is_running(child_pid)
    finally:
        if _is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        process.kill()
        process.wait()


def test_measuring_child_exits_when_parent_is_gone():
    completed = subprocess.run(
        [sys.executable, "-c", "from scripts import pema; pema._exit_with_parent(-1)"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1


def test_unknown_model_exits_2_from_shell(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.pema", "--preset", "smoke", "--model", "gpt", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert "model='gpt' is not valid" in completed.stderr


def without_measurements(tree):
    """Drop wall-clock times and resident memory sizes, which differ between any two runs."""
    if isinstance(tree, dict):
        return {key: without_measurements(value) for key, value in tree.items() if key not in MEASUREMENTS}
    if isinstance(tree, list):
        return [without_measurements(value) for value in tree]
    return tree


def test_sigkill_then_restart_matches(smoke_run, tmp_path):
    argv, report = smoke_run
    argv = interrupt.relocated(argv, tmp_path)
    files = interrupt.kill_point("scripts.pema", 2, 20)
    restarted, _ = interrupt.kill_then_restart("scripts.pema", argv, tmp_path / "work", files=files)
    # Every score, loss, output and count must match exactly.
    assert without_measurements(results_of(restarted)) == without_measurements(results_of(report))
