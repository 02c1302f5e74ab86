"""Weak-to-strong generalization on a ladder of models (Burns et al., arXiv:2312.09390, 2023).

A weak model trained on ground truth labels data that a strong model then trains on. The
performance gap recovered (PGR) measures how much of the gap between the weak model and
the strong model's ceiling (the strong model trained on ground truth) the weakly
supervised strong model closes:

    PGR = (weak_to_strong_acc - weak_acc) / (strong_acc - weak_acc)

PGR = 0 when the student only matches its weak supervisor, 1 when it matches its ceiling.
"""

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from align import ladder, losses, training


def performance_gap_recovered(weak_acc, weak_to_strong_acc, strong_acc):
    """Compute the fraction of the weak-to-ceiling accuracy gap that the weakly supervised model closes.

    Accepts scalars or arrays of equal shape (any accuracy unit, the same for all three)
    and works elementwise. A negative value means the student did worse than its
    supervisor; a value above 1 means it beat its ceiling. When the ceiling is below the
    weak model the result is still computed, but its sign no longer reads as above.

    Returns:
      float for scalar inputs, else a float64 array.

    Raises:
      ValueError: an accuracy is not finite, or strong_acc equals weak_acc (no gap to recover).
    """
    weak, student, strong = (np.asarray(v, np.float64) for v in (weak_acc, weak_to_strong_acc, strong_acc))
    for name, value in (("weak_acc", weak), ("weak_to_strong_acc", student), ("strong_acc", strong)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}={value} is not finite; accuracies must be finite numbers.")
    gap = strong - weak
    if np.any(gap == 0):
        raise ValueError(
            f"strong_acc={strong} equals weak_acc={weak}, so there is no gap to recover and "
            "PGR is undefined; strong_acc must differ from weak_acc."
        )
    pgr = (student - weak) / gap
    return float(pgr) if pgr.ndim == 0 else pgr


# --------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Split:
    """The training pool in two halves, and the test set.

    Half A trains the weak supervisors with ground truth, and they label half B for the
    students. The ceilings train on half B with ground truth. Images are uint8
    [N, H, W, C] and labels int32 [N].
    """

    a_images: np.ndarray
    a_labels: np.ndarray
    b_images: np.ndarray
    b_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


def split_halves(images, labels, test_images, test_labels, *, num_classes):
    """Split a training pool into class-balanced halves: A gets the 1st, 3rd, ... example of each class."""
    labels = np.asarray(labels)
    rank = np.empty(labels.size, np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(members.size)
    first, second = np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)
    return Split(
        a_images=images[first], a_labels=labels[first],
        b_images=images[second], b_labels=labels[second],
        test_images=test_images, test_labels=test_labels, num_classes=num_classes,
    )


# --------------------------------------------------------------------------------------
# Training runs


LOSS_NAMES = ("naive", "confidence")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trainer:
    """Training settings shared by every run of one ladder.

    Attributes:
      options: model name -> `TrainOptions`.
      prepare: input preparation shared by every model (see `align.training.fit`).
      confidence: the `ConfidenceLoss` used where the confidence loss is asked for.
      cache_dir: folder for cached predictions and checkpoints, or None.
      build: model name -> Flax module.
    """

    options: dict
    prepare: Any
    confidence: losses.ConfidenceLoss = losses.ConfidenceLoss()
    cache_dir: Any = None
    build: Callable = ladder.build

    def loss(self, name):
        """Return the loss object called `name` ("naive" or "confidence")."""
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; valid losses are {LOSS_NAMES}.")
        return losses.SoftCrossEntropy() if name == "naive" else self.confidence

    def train(self, model_name, images, targets, predict_on, loss_name, desc):
        """Train one model and return {name: probabilities} on `predict_on`."""
        run = training.Run(
            model_name=model_name, images=images, targets=targets, options=self.options[model_name],
            loss=self.loss(loss_name), prepare=self.prepare, predict_on=predict_on,
        )
        return training.train_and_predict(run, self.build, cache_dir=self.cache_dir, desc=desc)


def train_weak(trainer, split, name):
    """Train `name` on half A with ground truth; returns probabilities on "b" and "test"."""
    targets = training.one_hot(split.a_labels, split.num_classes)
    return trainer.train(name, split.a_images, targets, {"b": split.b_images, "test": split.test_images},
                         "naive", desc=f"{name} weak")


def train_ceiling(trainer, split, name):
    """Train `name` on half B with ground truth; returns probabilities on "test"."""
    targets = training.one_hot(split.b_labels, split.num_classes)
    return trainer.train(name, split.b_images, targets, {"test": split.test_images}, "naive",
                         desc=f"{name} ceiling")


def train_student(trainer, split, name, teacher_b_probs, loss_name, desc):
    """Train `name` on half B with a teacher's probabilities; returns probabilities on "b" and "test"."""
    return trainer.train(name, split.b_images, teacher_b_probs,
                         {"b": split.b_images, "test": split.test_images}, loss_name, desc=desc)


def run_chain(trainer, split, names, first_teacher_b_probs, loss_name):
    """Train each model of `names` on its predecessor's labels of half B.

    `names[0]` is the first student and learns from `first_teacher_b_probs`. A student's
    labels for its successor are its predictions on half B, the data it trained on, so
    they carry its fit to its own teacher as well as what it generalised.

    Returns:
      a list with {"model", "test_probs", "b_probs"} per student, in order.
    """
    teacher = first_teacher_b_probs
    students = []
    for index, name in enumerate(names):
        probs = train_student(trainer, split, name, teacher, loss_name,
                              desc=f"{name} student {index + 1} ({loss_name})")
        students.append({"model": name, "test_probs": probs["test"], "b_probs": probs["b"]})
        teacher = probs["b"]
    return students


def pgr_or_none(weak_acc, student_acc, strong_acc):
    """PGR, or None when the ceiling equals the weak accuracy."""
    if strong_acc == weak_acc:
        return None
    return performance_gap_recovered(weak_acc, student_acc, strong_acc)


def run_ladder(trainer, split, names, *, bootstrap_via=None):
    """Weak supervisors, ceilings and every (weak, strong) pair, naive and with the confidence loss.

    Args:
      trainer: `Trainer`.
      split: `Split`.
      names: model names, weak to strong.
      bootstrap_via: a middle model name; when given, also trains names[0] -> middle ->
        names[-1] with the confidence loss at each step, against names[0] -> names[-1].

    Returns:
      JSON-ready dict with "weak" and "ceiling" (name -> test accuracy), "pairs" (one
      dict per pair: weak, strong, accuracies, gap and PGR per loss) and, with
      `bootstrap_via`, "bootstrap".
    """
    ladder.check_names(names)
    accuracy = functools.partial(training.accuracy, labels=split.test_labels)
    weak_probs = {name: train_weak(trainer, split, name) for name in names[:-1]}
    ceilings = {name: accuracy(train_ceiling(trainer, split, name)["test"]) for name in names}
    result = {
        "weak": {name: accuracy(probs["test"]) for name, probs in weak_probs.items()},
        "ceiling": ceilings,
        "pairs": [],
    }
    for i, weak in enumerate(names[:-1]):
        for strong in names[i + 1:]:
            entry = {"weak": weak, "strong": strong, "weak_acc": result["weak"][weak],
                     "strong_acc": ceilings[strong], "gap": ceilings[strong] - result["weak"][weak]}
            for loss_name in LOSS_NAMES:
                probs = train_student(trainer, split, strong, weak_probs[weak]["b"], loss_name,
                                      desc=f"{weak}->{strong} ({loss_name})")
                entry[f"{loss_name}_acc"] = accuracy(probs["test"])
                entry[f"pgr_{loss_name}"] = pgr_or_none(entry["weak_acc"], entry[f"{loss_name}_acc"],
                                                        entry["strong_acc"])
            result["pairs"].append(entry)

    if bootstrap_via is not None:
        if bootstrap_via not in names[1:-1]:
            raise ValueError(
                f"bootstrap_via={bootstrap_via!r} must be a middle rung of the ladder, one of {list(names[1:-1])}."
            )
        weak, strong = names[0], names[-1]
        chain = run_chain(trainer, split, [bootstrap_via, strong], weak_probs[weak]["b"], "confidence")
        direct = next(p for p in result["pairs"] if p["weak"] == weak and p["strong"] == strong)
        final = accuracy(chain[-1]["test_probs"])
        result["bootstrap"] = {
            "chain": [weak, bootstrap_via, strong],
            "middle_acc": accuracy(chain[0]["test_probs"]),
            "bootstrapped_acc": final,
            "direct_acc": direct["confidence_acc"],
            "weak_acc": direct["weak_acc"],
            "strong_acc": direct["strong_acc"],
            "pgr_bootstrapped": pgr_or_none(direct["weak_acc"], final, direct["strong_acc"]),
            "pgr_direct": direct["pgr_confidence"],
        }
    return result
