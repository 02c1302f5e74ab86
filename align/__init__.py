"""Scalable oversight: weak-to-strong generalization, debate and iterative teacher-student training."""
