"""The confidence loss and its parts against hand-computed values and a greedy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align import losses


def greedy_hardening(probs, quotas):
    """Reference: match (example, class) pairs in order of decreasing probability."""
    n, num_classes = probs.shape
    assigned = np.full(n, -1)
    room = np.array(quotas)
    for flat in np.argsort(-probs, axis=None, kind="stable"):
        example, label = divmod(int(flat), num_classes)
        if assigned[example] < 0 and room[label] > 0:
            assigned[example] = label
            room[label] -= 1
    return assigned


@pytest.mark.parametrize(
    "fractions, count, expected",
    [
        ((0.5, 0.3, 0.2), 7, (4, 2, 1)),  # 3.5, 2.1, 1.4: the left-over example goes to the 0.5 remainder
        ((1, 1, 1), 4, (2, 1, 1)),  # equal remainders: the lower class index first
        ((0.25, 0.5, 0.25), 4, (1, 2, 1)),  # exact
        ((0.0, 1.0), 5, (0, 5)),
    ],
)
def test_class_quotas_by_largest_remainder(fractions, count, expected):
    quotas = losses.class_quotas(jnp.asarray(fractions, jnp.float32), count)
    assert quotas.tolist() == list(expected)


@pytest.mark.parametrize("use_jit", [False, True])
def test_hardening_three_classes_by_hand(use_jit):
    probs = jnp.asarray([
        [0.70, 0.20, 0.10],
        [0.60, 0.30, 0.10],
        [0.50, 0.10, 0.40],
        [0.45, 0.35, 0.20],
    ])
    # Quotas (1, 2, 1). In decreasing order, pair (0, c0) is taken. Pairs (1, c0), (2, c0)
    # and (3, c0) find class 0 full. Then (2, c2), (3, c1) and (1, c1) are taken.
    harden = jax.jit(losses.harden_to_class_balance) if use_jit else losses.harden_to_class_balance
    hardened = harden(probs, jnp.asarray([0.25, 0.5, 0.25]))
    assert hardened.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]]


def test_hardening_two_classes_is_a_quantile_threshold():
    p0 = jnp.asarray([0.9, 0.55, 0.8, 0.6, 0.3, 0.7])
    probs = jnp.stack([p0, 1 - p0], axis=1)
    # Every argmax is class 0 but one; a 50/50 balance puts the three largest p0 in class 0.
    hardened = losses.harden_to_class_balance(probs, jnp.asarray([0.5, 0.5]))
    assert hardened[:, 0].tolist() == [1, 0, 1, 0, 0, 1]


def test_hardening_matches_greedy_reference():
    rng = np.random.default_rng(0)
    harden = jax.jit(losses.harden_to_class_balance)
    for n, num_classes in ((7, 2), (16, 10), (33, 5)):
        for _ in range(6):
            probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(n, num_classes)) * 3, jnp.float32))
            fractions = jnp.asarray(rng.dirichlet(np.ones(num_classes)), jnp.float32)
            quotas = np.asarray(losses.class_quotas(fractions, n))
            hardened = np.asarray(harden(probs, fractions))
            assert hardened.sum(axis=1).tolist() == [1] * n
            assert hardened.sum(axis=0).tolist() == quotas.tolist()
            expected = greedy_hardening(np.asarray(probs), quotas)
            assert hardened.argmax(axis=1).tolist() == expected.tolist()


def test_confidence_weight_warms_up_linearly():
    def weight(step, warmup_fraction=0.2):
        return float(losses.confidence_weight(step, 100, alpha_max=0.75, warmup_fraction=warmup_fraction))

    assert weight(0) == 0.0
    assert weight(10) == pytest.approx(0.375)
    assert weight(20) == pytest.approx(0.75)
    assert weight(90) == pytest.approx(0.75)
    assert weight(0, warmup_fraction=0.0) == pytest.approx(0.75)


def hand_batch():
    # Student probabilities (0.8, 0.2) and (0.6, 0.4); weak labels with mean (0.5, 0.5).
    logits = jnp.log(jnp.asarray([[0.8, 0.2], [0.6, 0.4]]))
    weak = jnp.asarray([[0.7, 0.3], [0.3, 0.7]])
    return logits, weak


def test_confidence_loss_by_hand():
    logits, weak = hand_batch()
    # Hardening with quotas (1, 1): example 0 -> class 0 (0.8 first), example 1 -> class 1
    # (class 0 is full), although both argmaxes are class 0. With alpha = 0.5 the targets are
    # (0.85, 0.15) and (0.15, 0.85).
    expected = -(0.85 * math.log(0.8) + 0.15 * math.log(0.2) + 0.15 * math.log(0.6) + 0.85 * math.log(0.4)) / 2
    loss = losses.confidence_loss(logits, weak, 0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(0.643279, abs=1e-6)


def test_confidence_loss_alpha_zero_is_naive_loss():
    logits, weak = hand_batch()
    naive = losses.SoftCrossEntropy()(logits, weak, 0, 10)
    expected = -(0.7 * math.log(0.8) + 0.3 * math.log(0.2) + 0.3 * math.log(0.6) + 0.7 * math.log(0.4)) / 2
    assert float(naive) == pytest.approx(expected, rel=1e-6)
    assert float(losses.confidence_loss(logits, weak, 0.0)) == pytest.approx(expected, rel=1e-6)


def test_confidence_loss_gradient_treats_hardened_labels_as_constants():
    logits, weak = hand_batch()
    grads = jax.grad(losses.confidence_loss)(logits, weak, 0.5)
    targets = jnp.asarray([[0.85, 0.15], [0.15, 0.85]])
    expected = (jax.nn.softmax(logits) - targets) / 2
    np.testing.assert_allclose(np.asarray(grads), np.asarray(expected), atol=1e-6)


def test_confidence_loss_object_follows_warmup():
    logits, weak = hand_batch()
    loss = losses.ConfidenceLoss(alpha_max=0.5, warmup_fraction=0.5)
    at_start = loss(logits, weak, 0, 100)
    warmed = loss(logits, weak, 50, 100)
    assert float(at_start) == pytest.approx(float(losses.confidence_loss(logits, weak, 0.0)), rel=1e-6)
    assert float(warmed) == pytest.approx(0.643279, abs=1e-6)


@pytest.mark.parametrize("field, value", [("alpha_max", 1.5), ("alpha_max", -0.1), ("warmup_fraction", 2.0)])
def test_confidence_loss_rejects_out_of_range(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value} is outside the valid range \[0, 1\]"):
        losses.ConfidenceLoss(**{field: value})
