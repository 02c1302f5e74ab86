"""Iterative teacher-student training along a ladder of models.

The path proposed for superalignment in the survey literature: the weakest model learns
from ground truth, and every later model learns only from the labels of the one before,
then becomes the teacher of the next. Generation 0 is the weakest model trained on half
A; generation g >= 1 is ladder model g trained on half B with the labels of generation
g - 1. Each generation's PGR compares it with generation 0 (the only ground-truth
supervisor) and with its own ceiling (the same model trained on half B with ground
truth).
"""

from align import ladder, training
from align import weak_to_strong as w2s


def run_generations(trainer, split, names, loss_name):
    """Train the generations of `names` and measure each against ground truth.

    Args:
      trainer: `align.weak_to_strong.Trainer`.
      split: `align.weak_to_strong.Split`.
      names: model names, weak to strong; names[0] is generation 0.
      loss_name: "naive" or "confidence", the loss of every student.

    Returns:
      a list of JSON-ready dicts, one per generation: generation, model, test accuracy,
      ceiling accuracy, and PGR against generation 0 (None for generation 0 itself, or
      where the ceiling equals generation 0's accuracy).
    """
    ladder.check_names(names)
    accuracy = lambda probs: training.accuracy(probs, split.test_labels)  # noqa: E731
    first = w2s.train_weak(trainer, split, names[0])
    first_acc = accuracy(first["test"])
    rows = [{"generation": 0, "model": names[0], "teacher": "ground truth (half A)", "acc": first_acc,
             "ceiling_acc": None, "pgr": None}]
    students = w2s.run_chain(trainer, split, list(names[1:]), first["b"], loss_name)
    for generation, student in enumerate(students, start=1):
        ceiling = accuracy(w2s.train_ceiling(trainer, split, student["model"])["test"])
        acc = accuracy(student["test_probs"])
        rows.append({
            "generation": generation, "model": student["model"], "teacher": names[generation - 1],
            "acc": acc, "ceiling_acc": ceiling, "pgr": w2s.pgr_or_none(first_acc, acc, ceiling),
        })
    return rows
