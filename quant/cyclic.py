"""Progressive bit reduction and cyclic training with multiple quantization steps (CTMQ).

CTMQ (H. Kim, J. Shin and A. A. Del Barrio, "CTMQ: Cyclic Training of Convolutional
Neural Networks with Multiple Quantization Steps", arXiv:2206.12794, 2022) starts from a
pretrained float model and trains a b-bit model, whose weights initialise the
(b-1)-bit model, down to the target bit width. A cycle then trains an accurate model
from the low-bit weights and quantizes it down again. Every step starts from the
float master weights that the previous step left.

A `Schedule` lists those steps. With start_bits=4, target_bits=1 and cycles=2:

    | accurate   | descent    | cycle 1            | cycle 2            |
    |------------|------------|--------------------|--------------------|
    | "float32"  | 4, 3, 2, 1 | float, 4, 3, 2, 1  | float, 4, 3, 2, 1  |
    | "plus_one" | 4, 3, 2, 1 | 2, 1               | 2, 1               |

NOTE: the abstract does not say whether a cycle descends through every bit width again
or only from the accurate model to the target. Here a float32 accurate model descends
from start_bits again, and a (target+1)-bit accurate model steps straight to the target.

`run_schedule` drives any `train(params, quantizer, epochs) -> params` function through
the steps. It saves the params after every step and resumes after the last saved step,
so an interrupted run restarted with the same arguments ends with the same params,
provided `train` and `evaluate` are deterministic functions of their arguments.
"""

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import serialization

from quant import quantizers

logger = logging.getLogger(__name__)

ACCURATE_MODELS = ("float32", "plus_one")
SCHEDULE_FILE = "schedule.json"
HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """One training run of a schedule.

    Attributes:
      index: position in the schedule, from 0.
      bits: weight bit width, or None for float32.
      epochs: training epochs of this step.
      first_epoch: epochs trained by the earlier steps, so a train function can continue
        its data order and learning-rate schedule from there.
      cycle: 0 for the first descent, c for the c-th cycle.
    """

    index: int
    bits: int | None
    epochs: float
    first_epoch: float
    cycle: int

    @property
    def label(self):
        """"float32" or "<bits>-bit"."""
        return "float32" if self.bits is None else f"{self.bits}-bit"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """Progressive bit reduction from `start_bits` to `target_bits`, then `cycles` cycles.

    Attributes:
      start_bits: bit width of the first quantized step, in 1..16.
      target_bits: bit width of the last step, in 1..start_bits.
      epochs_per_step: epochs of every step, positive.
      cycles: number of cycles after the first descent; 0 gives progressive bit
        reduction alone, and start_bits == target_bits with 0 cycles trains the target
        model directly.
      accurate: the accurate model of each cycle: "float32", or "plus_one" for
        target_bits + 1 bits.
    """

    start_bits: int
    target_bits: int
    epochs_per_step: float = 1.0
    cycles: int = 0
    accurate: str = "float32"

    def __post_init__(self):
        quantizers.check_bits(self.start_bits, name="start_bits")
        quantizers.check_bits(self.target_bits, name="target_bits")
        if self.target_bits > self.start_bits:
            raise ValueError(
                f"target_bits={self.target_bits} exceeds start_bits={self.start_bits}; the "
                "schedule reduces the bit width, so target_bits must be in 1..start_bits."
            )
        if isinstance(self.cycles, bool) or not isinstance(self.cycles, int) or self.cycles < 0:
            raise ValueError(f"cycles={self.cycles!r} must be a non-negative integer.")
        epochs = self.epochs_per_step
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not (math.isfinite(epochs) and epochs > 0):
            raise ValueError(f"epochs_per_step={epochs!r} must be a positive finite number.")
        if self.accurate not in ACCURATE_MODELS:
            raise ValueError(f"accurate={self.accurate!r} is not valid; choose one of {ACCURATE_MODELS}.")
        if self.accurate == "plus_one" and self.cycles and self.target_bits + 1 > quantizers.MAX_BITS:
            raise ValueError(
                f"accurate='plus_one' needs target_bits + 1 <= {quantizers.MAX_BITS}, got "
                f"target_bits={self.target_bits}."
            )

    def bit_widths(self):
        """Bit width of every step in order, None for float32."""
        descent = list(range(self.start_bits, self.target_bits - 1, -1))
        if self.accurate == "float32":
            cycle = [None] + descent
        else:
            cycle = [self.target_bits + 1, self.target_bits]
        return descent + cycle * self.cycles

    def steps(self):
        """List the schedule's `Step`s in order."""
        descent = self.start_bits - self.target_bits + 1
        cycle_length = (descent + 1) if self.accurate == "float32" else 2
        steps = []
        for index, bits in enumerate(self.bit_widths()):
            cycle = 0 if index < descent else 1 + (index - descent) // cycle_length
            steps.append(Step(index=index, bits=bits, epochs=float(self.epochs_per_step),
                              first_epoch=float(index * self.epochs_per_step), cycle=cycle))
        return tuple(steps)

    @property
    def total_epochs(self):
        """Epochs over all steps."""
        return len(self.bit_widths()) * float(self.epochs_per_step)

    def with_total_epochs(self, total_epochs):
        """Return a copy whose epochs_per_step makes the steps sum to `total_epochs`."""
        return dataclasses.replace(self, epochs_per_step=total_epochs / len(self.bit_widths()))


def float_steps(epochs):
    """Build a one-step schedule that trains the float32 model for `epochs` epochs."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs={epochs!r} must be a positive finite number.")
    return (Step(index=0, bits=None, epochs=float(epochs), first_epoch=0.0, cycle=0),)


@dataclasses.dataclass(frozen=True)
class StepQuantizer:
    """The params -> params quantizer of one step, with the step it belongs to.

    A train function calls it on the params inside its loss. `step` gives the bit width
    and the epoch at which the step starts in the schedule.
    """

    step: Step
    transform: Callable[[Any], Any]

    def __call__(self, params):
        return self.transform(params)

    @property
    def bits(self):
        """Bit width of the step, or None for float32."""
        return self.step.bits


@dataclasses.dataclass(frozen=True)
class CyclicResult:
    """Params after the last step and one record per step (its fields and the metrics of `evaluate`)."""

    params: Any
    history: tuple


def _identity(params):
    return params


def _write_atomic(path, data):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _checkpoint_path(directory, index):
    return directory / f"step-{index:04d}.msgpack"


def _check_schedule_file(directory, steps):
    identity = [dataclasses.asdict(step) for step in steps]
    path = directory / SCHEDULE_FILE
    if not path.exists():
        _write_atomic(path, (json.dumps(identity, indent=1) + "\n").encode())
        return
    if json.loads(path.read_text()) != identity:
        raise ValueError(
            f"{directory} contains checkpoints of a different schedule (its {SCHEDULE_FILE} "
            "differs); use another directory, or delete this one to start afresh."
        )


def _restore(directory, steps, params):
    """Return (params, history, next step index) from the newest complete step on disk."""
    history_path = directory / HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    # A step counts as done once both its checkpoint and its history record exist.
    while history and not _checkpoint_path(directory, history[-1]["index"]).exists():
        history.pop()
    if not history:
        return params, [], 0
    last = history[-1]["index"]
    restored = serialization.from_bytes(params, _checkpoint_path(directory, last).read_bytes())
    restored = jax.tree_util.tree_map(jnp.asarray, restored)
    logger.info("resuming with %d of %d steps done, from %s", last + 1, len(steps), directory)
    return restored, history, last + 1


def run_schedule(schedule, train, params, *, make_quantizer, directory=None, evaluate=None, keep=None):
    """Train through every step of `schedule`, checkpointing after each, and resume.

    Args:
      schedule: a `Schedule`, or a sequence of `Step`s such as `float_steps(epochs)`.
      train: function (params, quantizer, epochs) -> params. `quantizer` is a
        `StepQuantizer`, callable on params; `epochs` is the step's (possibly fractional)
        number of epochs.
      params: initial params, e.g. a pretrained float model. Any pytree; every step must
        return one of the same structure.
      make_quantizer: function bits -> (params -> params) for integer bits; float32
        steps use the identity.
      directory: folder for checkpoints and the history, or None for no checkpoints.
        It remembers its schedule, and another schedule raises ValueError.
      evaluate: optional function (params, quantizer) -> dict of floats, recorded in the
        history after each step (for accuracy along the schedule).
      keep: number of newest step checkpoints kept, or None for all.

    Returns:
      `CyclicResult` with the final params and the history of every step.
    """
    steps = tuple(schedule.steps() if isinstance(schedule, Schedule) else schedule)
    if not steps:
        raise ValueError("the schedule has no steps.")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep={keep!r} must be a positive integer or None.")

    history, start = [], 0
    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _check_schedule_file(directory, steps)
        params, history, start = _restore(directory, steps, params)

    for step in steps[start:]:
        transform = _identity if step.bits is None else make_quantizer(step.bits)
        quantizer = StepQuantizer(step, transform)
        logger.info("step %d/%d: %s, cycle %d, %.3g epochs", step.index + 1, len(steps), step.label,
                    step.cycle, step.epochs)
        params = train(params, quantizer, step.epochs)
        record = dataclasses.asdict(step)
        if evaluate is not None:
            metrics = {name: float(value) for name, value in evaluate(params, quantizer).items()}
            logger.info("step %d/%d (%s): %s", step.index + 1, len(steps), step.label,
                        ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
            record.update(metrics)
        history.append(record)
        if directory is not None:
            _write_atomic(_checkpoint_path(directory, step.index), serialization.to_bytes(params))
            _write_atomic(directory / HISTORY_FILE, (json.dumps(history, indent=1) + "\n").encode())
            if keep is not None and step.index >= keep:
                _checkpoint_path(directory, step.index - keep).unlink(missing_ok=True)
    return CyclicResult(params=params, history=tuple(history))
