"""Performance gap recovered against hand-computed values, and the ladder on MNIST."""

import numpy as np
import pytest

from align import teacher_student, training
from align import weak_to_strong as w2s
from align.weak_to_strong import performance_gap_recovered
from harness import data as data_lib


@pytest.mark.parametrize(
    "weak, student, strong, expected",
    [
        (0.6, 0.7, 0.8, 0.5),
        (0.6, 0.8, 0.8, 1.0),
        (0.6, 0.6, 0.8, 0.0),
        (0.6, 0.55, 0.8, -0.25),
        (60.0, 90.0, 80.0, 1.5),  # percentages work too; beating the ceiling gives PGR > 1
    ],
)
def test_pgr_by_hand(weak, student, strong, expected):
    assert performance_gap_recovered(weak, student, strong) == pytest.approx(expected)


def test_pgr_elementwise_on_arrays():
    pgr = performance_gap_recovered(np.array([0.5, 0.6]), np.array([0.6, 0.9]), np.array([0.9, 0.7]))
    np.testing.assert_allclose(pgr, [0.25, 3.0])


def test_pgr_rejects_equal_weak_and_strong():
    with pytest.raises(ValueError, match="strong_acc=0.7 equals weak_acc=0.7"):
        performance_gap_recovered(0.7, 0.75, 0.7)


def test_pgr_rejects_nan():
    with pytest.raises(ValueError, match="weak_to_strong_acc=nan is not finite"):
        performance_gap_recovered(0.5, float("nan"), 0.7)


@pytest.fixture(scope="module")
def mnist_split(data_dir):
    train = data_lib.load_image_dataset("mnist", "train", data_dir=data_dir).take(1024)
    test = data_lib.load_image_dataset("mnist", "test", data_dir=data_dir).take(500)
    return w2s.split_halves(train.images, train.labels, test.images, test.labels, num_classes=10), train.spec


@pytest.fixture(scope="module")
def trainer(mnist_split, experiment_workdir):
    _, spec = mnist_split
    # The MNIST settings and cache folder of the smoke preset of scripts.align, so that the
    # end-to-end test of that script reads these runs from the cache instead of training them again.
    options = training.TrainOptions(steps=60, batch_size=32, checkpoint_every=100)
    return w2s.Trainer(options={name: options for name in ("linear", "mlp", "cnn")},
                       prepare=training.standardize_for(spec), cache_dir=experiment_workdir / "align" / "mnist")


@pytest.fixture(scope="module")
def ladder_result(trainer, mnist_split):
    split, _ = mnist_split
    return w2s.run_ladder(trainer, split, ("linear", "mlp", "cnn"), bootstrap_via="mlp")


def test_split_halves_are_disjoint_and_balanced(mnist_split):
    split, _ = mnist_split
    # 1,024 images hold 103 or 102 of each class; each half gets 52 or 51 of each.
    assert len(split.a_labels) + len(split.b_labels) == 1024
    assert abs(len(split.a_labels) - len(split.b_labels)) <= 10
    assert np.bincount(split.a_labels, minlength=10).min() >= 51
    assert np.bincount(split.b_labels, minlength=10).min() >= 51
    a_rows = {image.tobytes() for image in split.a_images}
    assert not any(image.tobytes() in a_rows for image in split.b_images)


def test_ladder_weak_models_and_ceilings_learn(ladder_result):
    assert set(ladder_result["weak"]) == {"linear", "mlp"}
    # Chance is 0.1. After 60 steps of batch 32 the linear model is still far from converged.
    assert ladder_result["weak"]["linear"] > 0.6
    assert ladder_result["weak"]["mlp"] > 0.7
    assert ladder_result["ceiling"]["cnn"] > 0.8
    assert ladder_result["ceiling"]["cnn"] > ladder_result["weak"]["linear"]


def test_ladder_pairs_carry_consistent_pgr(ladder_result):
    pairs = {(p["weak"], p["strong"]): p for p in ladder_result["pairs"]}
    assert set(pairs) == {("linear", "mlp"), ("linear", "cnn"), ("mlp", "cnn")}
    for pair in pairs.values():
        for loss_name in w2s.LOSS_NAMES:
            expected = (pair[f"{loss_name}_acc"] - pair["weak_acc"]) / (pair["strong_acc"] - pair["weak_acc"])
            assert pair[f"pgr_{loss_name}"] == pytest.approx(expected)
    # Students of a weak supervisor learn from its labels: far above chance.
    assert pairs[("linear", "cnn")]["naive_acc"] > 0.6
    assert pairs[("linear", "cnn")]["confidence_acc"] > 0.6


def test_bootstrap_compares_chain_with_direct(ladder_result):
    boot = ladder_result["bootstrap"]
    direct = next(p for p in ladder_result["pairs"] if (p["weak"], p["strong"]) == ("linear", "cnn"))
    assert boot["chain"] == ["linear", "mlp", "cnn"]
    assert boot["direct_acc"] == direct["confidence_acc"]
    assert boot["bootstrapped_acc"] > 0.6
    assert boot["pgr_bootstrapped"] == pytest.approx(
        performance_gap_recovered(boot["weak_acc"], boot["bootstrapped_acc"], boot["strong_acc"])
    )


def test_teacher_student_generations_reuse_ladder_runs(trainer, mnist_split, ladder_result, monkeypatch):
    split, _ = mnist_split
    # Every run of the chain was trained by the ladder: the pair linear -> mlp and the
    # bootstrapping chain linear -> mlp -> cnn, so nothing trains again.
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("a cached run was trained again"))
    rows = teacher_student.run_generations(trainer, split, ("linear", "mlp", "cnn"), "confidence")
    assert [row["model"] for row in rows] == ["linear", "mlp", "cnn"]
    assert rows[0]["acc"] == ladder_result["weak"]["linear"]
    assert rows[2]["acc"] == ladder_result["bootstrap"]["bootstrapped_acc"]
    assert rows[2]["pgr"] == pytest.approx(
        performance_gap_recovered(rows[0]["acc"], rows[2]["acc"], ladder_result["ceiling"]["cnn"])
    )


@pytest.mark.parametrize(
    "names, message",
    [
        (("linear", "transformer"), r"unknown model names \['transformer'\]"),
        (("linear",), "a ladder needs at least two models"),
        (("mlp", "mlp"), "names a model twice"),
    ],
)
def test_ladder_rejects_bad_names(trainer, mnist_split, names, message):
    split, _ = mnist_split
    with pytest.raises(ValueError, match=message):
        w2s.run_ladder(trainer, split, names)


def test_unknown_loss_is_rejected(trainer):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        trainer.loss("hinge")
