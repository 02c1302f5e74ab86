"""Weak-to-strong generalization on a ladder of models (Burns et al., arXiv:2312.09390, 2023).

A weak model trained on ground truth labels data that a strong model then trains on. The
performance gap recovered (PGR) measures how much of the gap between the weak model and
the strong model's ceiling (the strong model trained on ground truth) the weakly
supervised strong model closes:

    PGR = (weak_to_strong_acc - weak_acc) / (strong_acc - weak_acc)

PGR = 0 when the student only matches its weak supervisor, 1 when it matches its ceiling.
"""

import numpy as np


def performance_gap_recovered(weak_acc, weak_to_strong_acc, strong_acc):
    """The fraction of the weak-to-ceiling accuracy gap that the weakly supervised model closes.

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
