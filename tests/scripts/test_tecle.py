"""scripts.tecle end to end at the smoke preset, and its statistics and config checks."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts import common, tecle
from tests.conftest import REPO
from tests.scripts import interrupt


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, experiment_workdir):
    root = tmp_path_factory.mktemp("tecle")
    argv = ["--preset", "smoke", "--workdir", str(experiment_workdir), "--results-dir", str(root / "results")]
    report = tecle.main(argv)
    return argv, Path(report)


def comparable(results):
    """Serialize results.json without its wall-clock seconds, so that equal results give equal text."""
    steps = {triple: timing["env_steps"] for triple, timing in results["timings"].items()}
    return json.dumps({"summary": results["summary"], "env_steps": steps}, sort_keys=True)


def results_of(report):
    return json.loads((Path(report).parent / "tecle" / "results.json").read_text())


def test_report_has_claims_tables_and_bands(smoke_run):
    _, report = smoke_run
    text = report.read_text()
    assert "## TeCLE: temporally correlated latent exploration" in text
    assert "| TeCLE beats RND and ICM under Noisy TV |" in text
    assert "| tecle β=-1 |" in text
    assert "| tecle β=1 |" in text
    assert "Do our numbers support the claims?" in text
    assert "### Deviations from the paper" in text
    assert "python -m scripts.tecle --preset smoke" in text
    assert "| MiniGrid-Empty-8x8 | noisy_tv | 1 |" in text
    assert "Noise along time against along the latent axis, over 1 (environment, setting, beta) cells" in text
    assert (report.parent / "tecle" / "MiniGrid-Empty-8x8-noisy_tv.png").stat().st_size > 1000


def test_results_cover_every_beta_and_seed(smoke_run):
    _, report = smoke_run
    runs = results_of(report)["summary"]["MiniGrid-Empty-8x8"]["noisy_tv"]
    assert sorted(runs) == ["tecle β=-1", "tecle β=1", "tecle-latent β=1"]
    for row in runs.values():
        assert len(row["final_per_seed"]) == 2
        assert len(row["curve_mean"]) == 4
        assert row["curve_steps"][-1] == 8 * 32 * 8
        assert 0.0 < row["tv_fraction"] < 1.0


def test_rerun_loads_cached_runs(smoke_run):
    argv, report = smoke_run
    second = tecle.main(argv)
    assert Path(second).parent != report.parent
    assert results_of(second) == results_of(report)


def test_window_returns_weigh_by_episode_count():
    nan = np.nan
    returns = np.array([[1.0, nan, 3.0, 0.0]])
    counts = np.array([[1, 0, 3, 0]])
    windows, edges = tecle.window_returns(returns, counts, 2)
    np.testing.assert_array_equal(edges, [0, 2, 4])
    # Window 1: one episode of return 1. Window 2: three episodes of mean 3, none after.
    np.testing.assert_allclose(windows, [[1.0, 3.0]])
    empty, _ = tecle.window_returns(np.array([[nan, nan]]), np.array([[0, 0]]), 1)
    assert np.isnan(empty[0, 0])


def test_confidence_interval_by_hand():
    # Values 1, 2, 3: mean 2, sample standard deviation 1, t(0.975, 2) = 4.3027.
    mean, half = tecle.mean_confidence(np.array([1.0, 2.0, 3.0, np.nan]))
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    _, single = tecle.mean_confidence(np.array([5.0]))
    assert np.isnan(single)


@pytest.mark.parametrize("change, match", [
    ({"envs": ("Pong-MinAtar",)}, r"unknown environment 'Pong-MinAtar'"),
    ({"betas": (0.0, 3.0)}, r"beta=3 is outside the valid range \[-2, 2\]"),
    ({"settings": ("windy",)}, r"setting 'windy' is not valid"),
    ({"methods": ("ngu",)}, r"method 'ngu' is not valid"),
    ({"envs": ()}, r"envs is empty; give at least one of \('MiniGrid-"),
    ({"settings": ()}, r"settings is empty"),
    ({"methods": ()}, r"methods is empty"),
    ({"minigrid_timesteps": 10}, r"minigrid_timesteps=10 is less than one rollout of --ppo.num-envs x "
                                 r"--ppo.num-steps = 256 environment steps; give at least 256"),
])
def test_invalid_config_raises(change, match):
    with pytest.raises(ValueError, match=match):
        tecle.validate(dataclasses.replace(tecle.PRESETS["smoke"], **change))


def test_indivisible_batch_raises():
    config = tecle.PRESETS["smoke"]
    config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, num_minibatches=3))
    with pytest.raises(ValueError, match=r"num_minibatches=3 does not divide the batch size"):
        tecle.validate(config)


def test_sigkill_then_restart_matches(tmp_path):
    # Each of the two triples caches one file. The kill lands after the first file, while
    # the second triple trains. Plain PPO compiles fastest of the methods, and the three
    # processes share a persistent compilation cache, so only the first one compiles.
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    argv = ["--preset", "smoke", "--methods", "ppo", "--settings", "plain", "noisy_tv"]
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.tecle", *argv, "--workdir", str(tmp_path / "work-uninterrupted"),
         "--results-dir", str(tmp_path / "results-uninterrupted")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **cache})
    assert completed.returncode == 0, completed.stderr[-3000:]
    uninterrupted = completed.stdout.strip().splitlines()[-1].split(" ", 3)[-1]
    argv += ["--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")]
    files = interrupt.kill_point("scripts.tecle", 1, 1)
    restarted, _ = interrupt.kill_then_restart("scripts.tecle", argv, tmp_path / "work", files=files, env=cache)
    assert set(results_of(restarted)["timings"]) == {"ppo-MiniGrid-Empty-8x8-plain", "ppo-MiniGrid-Empty-8x8-noisy_tv"}
    assert comparable(results_of(restarted)) == comparable(results_of(uninterrupted))


def test_sigint_exits_130_with_hint(tmp_path):
    # The interrupt lands while the second of two triples trains, after the first was
    # cached, where a KeyboardInterrupt could be lost in a garbage-collection callback.
    argv = ["--preset", "smoke", "--methods", "ppo", "--settings", "plain", "noisy_tv",
            "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")]
    status, stderr = interrupt.sigint_once_started("scripts.tecle", argv, tmp_path / "work", files=1)
    assert status == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == common.INTERRUPTED_MESSAGE
    assert "Traceback" not in stderr
    assert not list((tmp_path / "results").rglob("REPORT.md"))


def test_nonfinite_loss_names_first_update_and_run():
    finite = np.zeros((2, 3, 5), np.float32)
    diverged = finite.copy()
    diverged[1, 2, 3] = np.inf
    diverged[0, 1, 4] = np.nan
    metrics = {"policy_loss": finite, "tecle_kl": diverged}
    labels = ["tecle β=-1", "tecle β=1"]
    with pytest.raises(FloatingPointError, match=r"tecle on Env \(plain\): tecle_kl became inf at update 4 "
                                                 r"\(tecle β=1, seed 2\)\. Nothing was cached"):
        tecle.check_finite_losses(metrics, labels, "tecle on Env (plain)")
    tecle.check_finite_losses({"policy_loss": finite}, labels, "fine")
