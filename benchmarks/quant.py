"""Time one fake-quantized training step against the float32 step, same model and batch.

Every variant is the jitted training step of `scripts.cyclic_quant` (SGD with Nesterov
momentum, batch norm in training mode), run on the same random batch. Rounds alternate
between the variants so that load from other processes affects them alike, and each
variant's time is the median over rounds. The ratio divides by the float32 step's time.

Run: `python -m benchmarks.quant` (`--help` for the options). The goal is a ratio of at
most 1.3 for weight quantization.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from harness import data as data_lib
from harness import report as report_lib
from harness import train as train_lib
from scripts import cyclic_quant

VARIANTS = {
    # name: (weight bits, quantizer for 2 or more bits, quantized activations)
    "float32": (None, "dorefa", False),
    "binarize (per channel)": (1, "dorefa", False),
    "DoReFa 2-bit": (2, "dorefa", False),
    "uniform symmetric 8-bit": (8, "uniform_symmetric", False),
    "DoReFa 2-bit, 2-bit activations": (2, "dorefa", True),
}


def build_step(config, bits, spec):
    """Return the jitted train step of `config` at `bits` and its optimiser."""
    compiled = cyclic_quant.CompiledSteps(config, spec)
    transform = (lambda v: v) if bits is None else cyclic_quant.make_quantizer(config)(bits)
    step = cyclic_quant.cyclic.Step(index=0, bits=bits, epochs=1.0, first_epoch=0.0, cycle=0)
    quantizer = cyclic_quant.cyclic.StepQuantizer(step, transform)
    return compiled.train_step(quantizer), compiled.tx


def time_steps(step, state, batch, count):
    """Run `count` steps and return (state, seconds per step)."""
    images, labels, key = batch
    started = time.perf_counter()
    for index in range(count):
        state, metrics = step(state, images, labels, jax.random.fold_in(key, index), jnp.float32(0.01))
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - started) / count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", choices=sorted(cyclic_quant.TASKS),
                        help="network: cifar10 (ResNet-20) or mnist (small CNN)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median round is reported")
    args = parser.parse_args(argv)

    spec = data_lib.get_spec(args.dataset)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size,) + spec.image_shape, dtype=np.uint8)
    labels = rng.integers(0, spec.num_classes, (args.batch_size,), dtype=np.int32)
    batch = (jnp.asarray(images), jnp.asarray(labels), jax.random.key(1))

    steps, states = {}, {}
    for name, (bits, quantizer, activations) in VARIANTS.items():
        config = cyclic_quant.Config(dataset=args.dataset, weight_quantizer=quantizer,
                                     quantize_activations=activations, augment=False)
        step, tx = build_step(config, bits, spec)
        variables = jax.jit(cyclic_quant.build_model(config, None).init)(
            jax.random.key(0), jnp.zeros((1,) + spec.image_shape))
        params = variables["params"]
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))
        states[name], _ = time_steps(step, state, batch, 3)  # compiles and warms up
        steps[name] = step

    seconds = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            states[name], per_step = time_steps(steps[name], states[name], batch, args.steps)
            seconds[name].append(per_step)

    reference = statistics.median(seconds["float32"])
    rows = []
    for name in VARIANTS:
        median = statistics.median(seconds[name])
        rows.append([name, f"{1000 * median:.1f}", f"{1 / median:.2f}", f"{median / reference:.2f}"])
    title, _, _ = cyclic_quant.TASKS[args.dataset]
    print(f"{title}, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps")
    print(f"Machine: {report_lib.machine_description()}")
    print(report_lib.markdown_table(["training step", "ms/step", "steps/s", "ratio to float32"], rows))
    print(f"Kernels of every layer but {' and '.join(cyclic_quant.TASKS[args.dataset][2])} are quantized.")


if __name__ == "__main__":
    main()
