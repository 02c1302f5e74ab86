"""Losses for training a student on a teacher's soft labels.

Glossary (Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities
With Weak Supervision", arXiv:2312.09390, 2023):

- weak labels: the teacher's predicted class probabilities, `weak_probs` [batch, classes].
- naive loss: cross-entropy against the weak labels, `SoftCrossEntropy`.
- hardened predictions: the student's own predictions turned into one-hot labels by a
  threshold. The paper sets the threshold per batch so that the hardened labels have the
  weak labels' class balance. For two classes that threshold is a quantile of p(class 0).
  `harden_to_class_balance` extends this to many classes with one quota per class.
- auxiliary confidence loss: (1 - alpha) * CE(student, weak) + alpha * CE(student,
  hardened), with alpha raised linearly from 0 to `alpha_max` over the first
  `warmup_fraction` of training (`ConfidenceLoss`). Because cross-entropy is linear in
  its target, this equals the cross-entropy against the mixed target
  (1 - alpha) * weak + alpha * hardened.

Loss objects are frozen dataclasses, so that equal settings hash equally and a jitted
training step built for them is reused rather than compiled again.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax


def soft_cross_entropy(logits, targets):
    """Per-example cross-entropy of logits [N, C] against target distributions [N, C]; returns [N]."""
    return optax.softmax_cross_entropy(logits, targets)


def class_quotas(class_fractions, count):
    """Split `count` examples over the classes in proportion to `class_fractions`.

    Largest-remainder rounding: each class gets floor(count * fraction), and the examples
    left over go one each to the classes with the largest remainders (the lower class
    index first on ties). The quotas always sum to `count`.

    Args:
      class_fractions: float [C], non-negative; normalised here to sum to one.
      count: int, the number of examples.

    Returns:
      int32 [C].
    """
    fractions = class_fractions / jnp.sum(class_fractions)
    exact = count * fractions
    base = jnp.floor(exact).astype(jnp.int32)
    left_over = count - jnp.sum(base)
    # Stable sort of the negated remainders puts the lower class index first on ties.
    order = jnp.argsort(-(exact - base), stable=True)
    rank = jnp.argsort(order, stable=True)
    return base + (rank < left_over).astype(jnp.int32)


def harden_to_class_balance(probs, class_fractions):
    """Turn predictions into one-hot labels whose class counts follow `class_fractions`.

    Each class c takes quota_c examples (`class_quotas`), and the pairs (example, class)
    are matched in order of decreasing probability. The most confident pair is matched
    first, then the next pair whose example is unmatched and whose class has room, and so
    on. For two classes this is the paper's threshold on p(class 0) at the quantile that
    matches the weak labels' balance. The matching is computed by deferred acceptance
    (examples propose to classes in order of their probabilities, and each class keeps
    its quota of most probable proposers), which gives the same result as the greedy
    order when no two probabilities tie and runs as a few vectorised rounds.

    Args:
      probs: float [N, C], each row a distribution (only the order of values matters).
      class_fractions: float [C], the target share of each class.

    Returns:
      float32 [N, C] one-hot rows, with quota_c rows of class c.
    """
    n, num_classes = probs.shape
    quotas = class_quotas(class_fractions, n)
    preference = jnp.argsort(-probs, axis=1, stable=True)  # [N, C], best class first
    rows = jnp.arange(n)

    def proposals(choice):
        return preference[rows, jnp.minimum(choice, num_classes - 1)]

    def rejected(choice):
        proposed = proposals(choice)
        # Each class ranks its proposers by probability, the lower example index first on ties.
        scores = jnp.where(jax.nn.one_hot(proposed, num_classes, dtype=bool), probs, -1.0)
        ranks = jnp.argsort(jnp.argsort(-scores, axis=0, stable=True), axis=0, stable=True)
        return ranks[rows, proposed] >= quotas[proposed]

    def cond(state):
        _, pending = state
        return jnp.any(pending)

    def body(state):
        choice, pending = state
        choice = choice + pending.astype(choice.dtype)
        return choice, rejected(choice)

    # Quotas sum to N, so every example is accepted before it runs out of classes.
    start = jnp.zeros(n, jnp.int32)
    choice, _ = jax.lax.while_loop(cond, body, (start, rejected(start)))
    return jax.nn.one_hot(proposals(choice), num_classes, dtype=jnp.float32)


def confidence_weight(step, total_steps, *, alpha_max, warmup_fraction):
    """Compute the weight alpha of the hardened predictions at `step` of `total_steps`.

    alpha rises linearly from 0 at step 0 to `alpha_max` at step
    warmup_fraction * total_steps and stays there. With no warm-up it is `alpha_max`
    from the start.
    """
    warmup_steps = warmup_fraction * total_steps
    if warmup_steps <= 0:
        return jnp.asarray(alpha_max, jnp.float32)
    ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
    return alpha_max * ramp


def confidence_loss(logits, weak_probs, alpha):
    """Mean auxiliary confidence loss of a batch (see the module docstring).

    The hardened predictions are the student's own, taken without gradient, with the
    class balance of this batch's weak labels.

    Args:
      logits: float [N, C], the student's outputs.
      weak_probs: float [N, C], the teacher's probabilities.
      alpha: scalar in [0, 1], the weight of the hardened predictions.

    Returns:
      float32 scalar.
    """
    probs = jax.lax.stop_gradient(jax.nn.softmax(logits))
    hardened = harden_to_class_balance(probs, jnp.mean(weak_probs, axis=0))
    targets = (1.0 - alpha) * weak_probs + alpha * hardened
    return jnp.mean(soft_cross_entropy(logits, targets))


@dataclasses.dataclass(frozen=True)
class SoftCrossEntropy:
    """Cross-entropy against the targets: ground truth as one-hot rows, or weak labels (the naive loss)."""

    name = "naive"

    def __call__(self, logits, targets, step, total_steps):
        del step, total_steps
        return jnp.mean(soft_cross_entropy(logits, targets))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfidenceLoss:
    """The auxiliary confidence loss with a linear warm-up of alpha.

    Attributes:
      alpha_max: final weight of the hardened predictions, in [0, 1]. The paper uses
        0.75 for its largest students and 0.5 for the others.
      warmup_fraction: share of training over which alpha rises from 0, in [0, 1]; the
        paper warms up over the first 20%.
    """

    alpha_max: float = 0.75
    warmup_fraction: float = 0.2
    name = "confidence"

    def __post_init__(self):
        if not 0.0 <= self.alpha_max <= 1.0:
            raise ValueError(f"alpha_max={self.alpha_max} is outside the valid range [0, 1].")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(
                f"warmup_fraction={self.warmup_fraction} is outside the valid range [0, 1]."
            )

    def __call__(self, logits, targets, step, total_steps):
        alpha = confidence_weight(
            step, total_steps, alpha_max=self.alpha_max, warmup_fraction=self.warmup_fraction
        )
        return confidence_loss(logits, targets, alpha)
