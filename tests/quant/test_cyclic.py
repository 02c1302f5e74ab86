"""Cyclic schedules and their driver: step order, checkpoints and resumption."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import cyclic
from quant.cyclic import Schedule, run_schedule
from quant.transforms import Policy, Rule, quantize_params

TARGET = jnp.linspace(-1.0, 1.0, 16)


def make_quantizer(bits):
    quantizer = "binarize" if bits == 1 else "uniform_symmetric"
    policy = Policy(rules=(Rule(pattern="layer/w", quantizer=quantizer, bits=bits),))
    return lambda params: quantize_params(params, policy)


class ToyTrainer:
    """Gradient descent of the quantized params towards TARGET; records its calls.

    Four steps per epoch, with a step size that depends on the schedule position, so that
    a resumed run only matches if it restarts each step with the right arguments.
    """

    def __init__(self, fail_at_call=None):
        self.calls = []
        self.fail_at_call = fail_at_call

    def __call__(self, params, quantizer, epochs):
        if self.fail_at_call is not None and len(self.calls) == self.fail_at_call:
            raise RuntimeError("simulated crash")
        self.calls.append((quantizer.step.index, quantizer.bits, epochs))

        def loss(p):
            return jnp.sum((quantizer(p)["layer"]["w"] - TARGET) ** 2)

        learning_rate = 0.1 / (1 + quantizer.step.first_epoch)
        for _ in range(round(4 * epochs)):
            grads = jax.grad(loss)(params)
            params = jax.tree_util.tree_map(lambda w, g: w - learning_rate * g, params, grads)
        return params


def evaluate(params, quantizer):
    return {"error": jnp.sum((quantizer(params)["layer"]["w"] - TARGET) ** 2)}


def initial_params():
    return {"layer": {"w": jnp.linspace(0.5, -0.3, 16)}}


def assert_same_params(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_float32_cycles_descend_from_start_bits():
    schedule = Schedule(start_bits=4, target_bits=1, epochs_per_step=0.5, cycles=2)
    steps = schedule.steps()
    assert [s.bits for s in steps] == [4, 3, 2, 1, None, 4, 3, 2, 1, None, 4, 3, 2, 1]
    assert [s.cycle for s in steps] == [0] * 4 + [1] * 5 + [2] * 5
    assert [s.first_epoch for s in steps] == [0.5 * i for i in range(14)]
    assert [s.index for s in steps] == list(range(14))
    assert schedule.total_epochs == 7.0
    assert steps[4].label == "float32"
    assert steps[5].label == "4-bit"


def test_plus_one_cycles_and_direct_schedule():
    steps = Schedule(start_bits=4, target_bits=1, cycles=2, accurate="plus_one").steps()
    assert [s.bits for s in steps] == [4, 3, 2, 1, 2, 1, 2, 1]
    assert [s.cycle for s in steps] == [0, 0, 0, 0, 1, 1, 2, 2]
    direct = Schedule(start_bits=1, target_bits=1, epochs_per_step=6).steps()
    assert [(s.bits, s.epochs) for s in direct] == [(1, 6.0)]
    progressive = Schedule(start_bits=3, target_bits=2).steps()
    assert [s.bits for s in progressive] == [3, 2]


def test_with_total_epochs_equalises_budgets():
    for cycles in (0, 1, 2, 3):
        schedule = Schedule(start_bits=4, target_bits=1, cycles=cycles).with_total_epochs(12)
        assert sum(s.epochs for s in schedule.steps()) == pytest.approx(12)
    assert cyclic.float_steps(12)[0].epochs == 12.0
    assert cyclic.float_steps(12)[0].bits is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"start_bits": 0, "target_bits": 0}, r"start_bits=0 is not a valid bit width: it must be an integer in 1\.\.16"),
        ({"start_bits": 17, "target_bits": 1}, r"start_bits=17 is not a valid bit width"),
        ({"start_bits": 4, "target_bits": 1.5}, r"target_bits=1\.5 is not a valid bit width"),
        ({"start_bits": 2, "target_bits": 3}, r"target_bits=3 exceeds start_bits=2"),
        ({"start_bits": 4, "target_bits": 1, "cycles": -1}, r"cycles=-1 must be a non-negative integer"),
        ({"start_bits": 4, "target_bits": 1, "epochs_per_step": 0}, r"epochs_per_step=0 must be a positive"),
        ({"start_bits": 4, "target_bits": 1, "epochs_per_step": float("nan")}, r"epochs_per_step=nan"),
        ({"start_bits": 4, "target_bits": 1, "accurate": "bf16"}, r"accurate='bf16' is not valid; choose one of"),
        ({"start_bits": 16, "target_bits": 16, "cycles": 1, "accurate": "plus_one"}, r"target_bits \+ 1 <= 16"),
    ],
)
def test_invalid_schedule_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**fields)


def test_driver_trains_every_step_in_order(tmp_path):
    schedule = Schedule(start_bits=3, target_bits=1, epochs_per_step=0.5, cycles=1)
    trainer = ToyTrainer()
    result = run_schedule(schedule, trainer, initial_params(), make_quantizer=make_quantizer,
                          directory=tmp_path, evaluate=evaluate)
    assert trainer.calls == [(0, 3, 0.5), (1, 2, 0.5), (2, 1, 0.5), (3, None, 0.5), (4, 3, 0.5),
                             (5, 2, 0.5), (6, 1, 0.5)]
    assert [r["bits"] for r in result.history] == [3, 2, 1, None, 3, 2, 1]
    # The float32 step fits TARGET better than any binarized step.
    errors = [r["error"] for r in result.history]
    assert errors[3] < min(errors[2], errors[6])
    saved = json.loads((tmp_path / cyclic.HISTORY_FILE).read_text())
    assert saved == list(result.history)
    assert len(list(tmp_path.glob("step-*.msgpack"))) == 7


def test_driver_without_directory_matches(tmp_path):
    schedule = Schedule(start_bits=2, target_bits=1, cycles=1)
    with_files = run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer,
                              directory=tmp_path)
    in_memory = run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer)
    assert_same_params(with_files.params, in_memory.params)


@pytest.mark.parametrize("fail_at_call", [0, 3, 6])
def test_resume_after_crash_is_identical(tmp_path, fail_at_call):
    schedule = Schedule(start_bits=3, target_bits=1, epochs_per_step=0.75, cycles=1)
    reference = run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer,
                             directory=tmp_path / "reference", evaluate=evaluate)

    crashing = ToyTrainer(fail_at_call=fail_at_call)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_schedule(schedule, crashing, initial_params(), make_quantizer=make_quantizer,
                     directory=tmp_path / "run", evaluate=evaluate)
    resumed_trainer = ToyTrainer()
    resumed = run_schedule(schedule, resumed_trainer, initial_params(), make_quantizer=make_quantizer,
                           directory=tmp_path / "run", evaluate=evaluate)

    assert [call[0] for call in resumed_trainer.calls] == list(range(fail_at_call, 7))
    assert_same_params(resumed.params, reference.params)
    assert resumed.history == reference.history


def test_completed_run_is_not_retrained(tmp_path):
    schedule = Schedule(start_bits=2, target_bits=1, cycles=1)
    first = run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer,
                         directory=tmp_path)
    trainer = ToyTrainer()
    again = run_schedule(schedule, trainer, initial_params(), make_quantizer=make_quantizer, directory=tmp_path)
    assert trainer.calls == []
    assert_same_params(again.params, first.params)


def test_step_without_history_record_is_redone(tmp_path):
    # A crash between writing a step's checkpoint and its history record leaves the
    # checkpoint behind. The driver redoes that step and still ends with the same params.
    schedule = Schedule(start_bits=3, target_bits=1, cycles=1)
    reference = run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer,
                             directory=tmp_path / "reference")
    with pytest.raises(RuntimeError):
        run_schedule(schedule, ToyTrainer(fail_at_call=4), initial_params(), make_quantizer=make_quantizer,
                     directory=tmp_path / "run")
    history_path = tmp_path / "run" / cyclic.HISTORY_FILE
    history = json.loads(history_path.read_text())
    history_path.write_text(json.dumps(history[:-1]))
    trainer = ToyTrainer()
    resumed = run_schedule(schedule, trainer, initial_params(), make_quantizer=make_quantizer,
                           directory=tmp_path / "run")
    assert trainer.calls[0][0] == 3
    assert_same_params(resumed.params, reference.params)


def test_keep_limits_checkpoints(tmp_path):
    schedule = Schedule(start_bits=3, target_bits=1, cycles=1)
    run_schedule(schedule, ToyTrainer(), initial_params(), make_quantizer=make_quantizer,
                 directory=tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*.msgpack")) == ["step-0005.msgpack", "step-0006.msgpack"]


def test_other_schedule_in_directory_is_rejected(tmp_path):
    run_schedule(Schedule(start_bits=2, target_bits=1), ToyTrainer(), initial_params(),
                 make_quantizer=make_quantizer, directory=tmp_path)
    with pytest.raises(ValueError, match=r"contains checkpoints of a different schedule"):
        run_schedule(Schedule(start_bits=3, target_bits=1), ToyTrainer(), initial_params(),
                     make_quantizer=make_quantizer, directory=tmp_path)


def test_float_steps_use_identity_quantizer(tmp_path):
    seen = []

    def train(params, quantizer, epochs):
        seen.append(quantizer.bits)
        assert quantizer(params) is params
        return params

    def no_quantizer(bits):
        raise AssertionError(f"make_quantizer called for a float32 step with bits={bits}")

    result = run_schedule(cyclic.float_steps(3), train, initial_params(), make_quantizer=no_quantizer)
    assert seen == [None]
    assert result.history[0]["epochs"] == 3.0
