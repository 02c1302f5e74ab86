"""Posit inference of CNNs with exact and PLAM multiplication.

Trains LeNet-5 on MNIST and a LeNet-5 style CNN on CIFAR-10 in float32, then evaluates
each, with the same parameters, in float32 and in posit arithmetic: for each format
(posit<16,1>, <8,0>, <8,2> by default) once with correctly rounded products and once
with PLAM products. Weights and activations are posits, and each output of a
convolution or dense layer is summed in the quire (or in float32, see `accumulate`) and
rounded once. It also measures PLAM's relative error on uniformly drawn posit<16,1>
operands and on products sampled from the networks' real operands.

The published numbers come from R. Murillo, A. A. Del Barrio, G. Botella, M. S. Kim,
H. Kim and N. Bagherzadeh, "PLAM: a Posit Logarithm-Approximate Multiplier", IEEE
Transactions on Emerging Topics in Computing 10 (2022), arXiv:2102.09262: posit<16,1>
top-1 with exact multiplication and with PLAM is 0.9903 and 0.9898 on MNIST, 0.7247 and
0.7251 on CIFAR-10, and PLAM's relative error has mean -3.85% and extreme -11.1%.

Deviations from the paper:
- Both networks are trained here from scratch for a few epochs at the `small` preset,
  so the float32 baselines are lower than fully trained ones. The CIFAR-10 network is
  LeNet-5 with 3 input channels, smaller than the paper's CIFAR-10 model.
- LeNet-5 uses ReLU and max pooling, not the original scaled tanh and subsampling.
- The `small` preset evaluates a fixed subset of each test split (`ImageDataset.take`),
  because emulated posit inference runs hundreds of times slower than float32.
- Images are normalised in float32 before the first layer rounds them to posits.
- The CIFAR-10 mirror stores JPEG re-encodings, slightly lossier than the originals.

Run: `python -m scripts.posit_cnn --preset small` (see `--help` for every field).
"""

import dataclasses
import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from approx import layers as approx_layers
from approx import posit
from approx import posit_layers
from harness import checkpoint as checkpoint_lib
from harness import config as config_lib
from harness import data as data_lib
from harness import metrics as metrics_lib
from harness import report as report_lib
from harness import train as train_lib
from models.lenet import LeNet5
from scripts import approx_cnn
from scripts import common

logger = logging.getLogger(__name__)
MODULE = "scripts.posit_cnn"
EXPERIMENT = "posit_cnn"
FP32 = "FP32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Training and evaluation of one network on one data set."""

    enabled: bool = True
    """Run this task."""
    steps: int = 400
    """Optimiser steps of float32 training."""
    batch_size: int = 128
    """Training batch size (a multiple of the device count)."""
    learning_rate: float = 0.05
    """Peak learning rate of SGD with Nesterov momentum 0.9 and cosine decay."""
    weight_decay: float = 5e-4
    """L2 weight decay on convolution and dense kernels."""
    augment: bool = False
    """Random crops and horizontal flips during training."""
    eval_examples: int | None = None
    """Test examples evaluated, the fixed subset `ImageDataset.take` selects; None for all."""
    eval_batch_size: int = 250
    """Batch size of evaluation."""
    error_images: int = 4
    """Test images whose layer operands are sampled for PLAM error statistics."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The posit CNN inference experiment."""

    preset: str = "small"
    """Preset: smoke, small or paper."""
    seed: int = 0
    """Seed of initialisation, data order, augmentation and error sampling."""
    data_dir: str | None = None
    """Folder with <name>/<split>.parquet; default JAXLAB_DATA_DIR, then hub, then registry copy."""
    workdir: str = "results/work"
    """Folder for checkpoints and cached evaluations (reused when the command is rerun)."""
    results_dir: str = "results"
    """Folder under which each run writes a new <timestamp>-<preset> report folder."""
    mnist: TaskConfig = TaskConfig()
    """LeNet-5 on MNIST."""
    cifar10: TaskConfig = TaskConfig()
    """LeNet-5 style CNN on CIFAR-10."""
    formats: tuple[str, ...] = ("16,1", "8,0", "8,2")
    """Posit formats evaluated, each as "nbits,es", each with exact and PLAM products."""
    accumulate: str = "quire"
    """Sum of products in posit layers: quire (exact, one rounding) or float32."""
    error_samples: int = 200_000
    """Operand pairs per error measurement."""
    checkpoint_every: int = 200
    """Checkpoint interval in steps."""
    log_every: int = 50
    """Logging interval in steps."""


PRESETS = {
    "smoke": Config(
        preset="smoke",
        mnist=TaskConfig(steps=30, batch_size=32, eval_examples=32, eval_batch_size=32,
                         error_images=1),
        cifar10=TaskConfig(steps=4, batch_size=16, eval_examples=16, eval_batch_size=16,
                           error_images=1),
        formats=("16,1",),
        error_samples=2_000,
        checkpoint_every=10,
        log_every=10,
    ),
    "small": Config(
        preset="small",
        mnist=TaskConfig(steps=938, learning_rate=0.05, eval_examples=2000),
        cifar10=TaskConfig(steps=1560, learning_rate=0.05, augment=True, eval_examples=1000),
    ),
    "paper": Config(
        preset="paper",
        mnist=TaskConfig(steps=4690, learning_rate=0.05),
        cifar10=TaskConfig(steps=39_000, learning_rate=0.05, augment=True),
        checkpoint_every=1000,
        log_every=200,
    ),
}

TASKS = {
    # task name: (data set, title for reports, LeNet5 keyword arguments)
    "mnist": ("mnist", "LeNet-5 on MNIST", {"first_padding": "SAME"}),
    "cifar10": ("cifar10", "LeNet-5 style CNN on CIFAR-10", {"first_padding": "VALID"}),
}

# Published posit<16,1> top-1 (exact multiplication, PLAM) from Murillo et al. (2022).
PUBLISHED_TOP1 = {"mnist": (0.9903, 0.9898), "cifar10": (0.7247, 0.7251)}
PUBLISHED_PLAM_ERROR = (-0.0385, -0.111)  # mean and extreme relative error


# --------------------------------------------------------------------------------------
# Formats and models


def parse_format(text):
    """Parse "nbits,es" into a PositFormat; ValueError names the text and the form."""
    try:
        nbits, es = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"format {text!r} is not of the form 'nbits,es', e.g. '16,1'.") from None
    return posit.PositFormat(nbits, es)


def arithmetic_label(fmt, products):
    """Row label of one posit arithmetic, e.g. "posit<16,1> PLAM"."""
    return str(fmt) + (" PLAM" if products == "plam" else "")


def arithmetics(config):
    """(label, format or None, products) of every evaluation, float32 first."""
    chosen = [(FP32, None, None)]
    for text in config.formats:
        fmt = parse_format(text)
        for products in posit.PRODUCTS:
            chosen.append((arithmetic_label(fmt, products), fmt, products))
    return chosen


def build_model(task, fmt=None, products="exact", accumulate="quire"):
    """Build the task's network, float32 when `fmt` is None, else computed in posit `fmt`."""
    _, _, kwargs = TASKS[task]
    if fmt is None:
        return LeNet5(**kwargs)
    settings = {"fmt": fmt, "products": products, "accumulate": accumulate}
    return LeNet5(conv=functools.partial(posit_layers.Conv, **settings),
                  dense=functools.partial(posit_layers.Dense, **settings), **kwargs)


# --------------------------------------------------------------------------------------
# Steps of one task


def _train_identity(config, task, task_config):
    fields = ("steps", "batch_size", "learning_rate", "weight_decay", "augment")
    return {"task": task, "seed": config.seed, "model": "LeNet5",
            **{f: getattr(task_config, f) for f in fields}}


def train_task(config, task, task_config, train_set, task_dir):
    """Train the float32 network (or resume it) and return its inference variables."""
    checkpointer = checkpoint_lib.Checkpointer(
        task_dir / "train", config=_train_identity(config, task, task_config),
        every=config.checkpoint_every,
    )
    options = train_lib.FitOptions(
        steps=task_config.steps,
        batch_size=task_config.batch_size,
        seed=config.seed,
        log_every=config.log_every,
        augment=task_config.augment,
        desc=f"{task} train",
    )
    state = train_lib.fit(
        build_model(task),
        approx_cnn.make_optimizer(task_config),
        train_set,
        options,
        checkpointer=checkpointer,
        metrics_log=metrics_lib.MetricsLog(task_dir / "train" / "metrics.jsonl"),
    )
    checkpointer.close()
    return jax.device_get(state.variables())


def _file_stem(label):
    """File name for an arithmetic's cached result, e.g. "posit16_1-PLAM"."""
    return label.replace("<", "").replace(">", "").replace(",", "_").replace(" ", "-")


def evaluate_arithmetics(config, task, task_config, variables, test_set, eval_dir):
    """Top-1/top-5 under each arithmetic, cached per arithmetic on disk."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, fmt, products in arithmetics(config):
        path = eval_dir / f"{_file_stem(label)}.json"
        if path.exists():
            results[label] = json.loads(path.read_text())
            continue
        model = build_model(task, fmt, products, config.accumulate)
        result = train_lib.evaluate(model, variables, test_set, batch_size=task_config.eval_batch_size,
                                    desc=f"{task} {label}")
        logger.info("%s %s: top-1 %.4f top-5 %.4f", task, label, result["top1"], result["top5"])
        checkpoint_lib.write_json_atomic(path, result)
        results[label] = result
    return results


def capture_operands(task, variables, images, spec):
    """Per layer, the [M, K] and [K, N] float32 matrices whose products the layer sums."""
    _, _, kwargs = TASKS[task]
    model = LeNet5(conv=approx_layers.Conv, dense=approx_layers.Dense, **kwargs)
    x = train_lib.normalize(jnp.asarray(images), spec)
    _, state = model.apply(variables, x, mutable=[approx_layers.OPERANDS])
    layers = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state[approx_layers.OPERANDS])[0]:
        keys = [getattr(p, "key", None) for p in path if hasattr(p, "key")]
        layers.setdefault("/".join(keys[:-1]), {})[keys[-1]] = np.asarray(value, np.float32)
    return {name: (sides["lhs"], sides["rhs"]) for name, sides in sorted(layers.items())}


def plam_errors(a, b, fmt):
    """Relative error of PLAM (rounded) against the exact product of posit operands.

    Args:
      a, b: float32 [S] operand values; they are rounded to `fmt` first, and pairs with
        a zero operand are left out.

    Returns:
      dict with "mean", "min" (most negative), "max" and "samples".
    """
    bits_a, bits_b = posit.encode(jnp.asarray(a), fmt), posit.encode(jnp.asarray(b), fmt)
    values_a = np.asarray(posit.decode(bits_a, fmt), np.float64)
    values_b = np.asarray(posit.decode(bits_b, fmt), np.float64)
    exact = values_a * values_b  # exact in float64: posit<16,1> significands have 13 bits
    plam = np.asarray(posit.decode(posit.plam_mul(bits_a, bits_b, fmt), fmt), np.float64)
    keep = exact != 0
    relative = (plam[keep] - exact[keep]) / exact[keep]
    return {"mean": float(relative.mean()), "min": float(relative.min()),
            "max": float(relative.max()), "samples": int(keep.sum())}


def uniform_operands(count, fmt, seed):
    """Posit values 2**s (1 + f), f uniform on the fraction grid, s in -2..1.

    In that range of s every posit has `fmt.fraction_bits` fraction bits, so the
    values are exact posits and f is uniform on all of them.
    """
    rng = np.random.default_rng(seed)
    width = fmt.fraction_bits

    def draw():
        fraction = rng.integers(0, 2**width, count) / 2**width
        return np.ldexp(1 + fraction, rng.integers(-2, 2, count)).astype(np.float32)

    return draw(), draw()


def run_task(config, task, task_config, work):
    """Train, evaluate and measure one task; returns its results, or {"skipped": why}."""
    dataset_name, _, _ = TASKS[task]
    try:
        train_set = data_lib.load_image_dataset(dataset_name, "train", data_dir=config.data_dir)
        test_set = data_lib.load_image_dataset(dataset_name, "test", data_dir=config.data_dir)
    except data_lib.DataNotFoundError as error:
        logger.warning("%s skipped: %s", task, error)
        return {"skipped": str(error)}

    identity = _train_identity(config, task, task_config)
    task_dir = work / f"{task}-{config_lib.config_hash(identity, exclude=())}"
    variables = train_task(config, task, task_config, train_set, task_dir)

    test_subset = test_set.take(task_config.eval_examples)
    eval_dir = task_dir / f"eval-balanced-{len(test_subset)}-{config.accumulate}"
    accuracy = evaluate_arithmetics(config, task, task_config, variables, test_subset, eval_dir)

    operands = capture_operands(task, variables, test_set.images[: task_config.error_images], test_set.spec)
    a, b = approx_cnn.sample_products(operands, config.error_samples, config.seed)
    return {
        "train_source": train_set.source,
        "test_source": test_set.source,
        "test_examples": len(test_subset),
        "test_total": len(test_set),
        "accuracy": accuracy,
        "plam_error": plam_errors(a, b, posit.PositFormat(16, 1)),
    }


# --------------------------------------------------------------------------------------
# Report


def _pct(value):
    return f"{100 * value:.2f}%"


def _delta(value, reference):
    return f"{100 * (value - reference):+.2f}"


def _task_table(result, config):
    reference = result["accuracy"][FP32]
    rows = []
    for label, _, _ in arithmetics(config):
        acc = result["accuracy"][label]
        rows.append([label, f"{acc['top1']:.4f}", f"{acc['top5']:.4f}",
                     _delta(acc["top1"], reference["top1"]), _delta(acc["top5"], reference["top5"])])
    return report_lib.markdown_table(["arithmetic", "top-1", "top-5", "Δ top-1 (pp)", "Δ top-5 (pp)"], rows)


def _error_cell(stats):
    return (f"mean {100 * stats['mean']:+.2f}%, extreme {100 * stats['min']:+.2f}%, "
            f"max {100 * stats['max']:+.2f}% ({stats['samples']:,} products)")


def _comparison(results, uniform):
    rows = []
    for task, result in results.items():
        if "skipped" in result:
            continue
        _, title, _ = TASKS[task]
        accuracy = result["accuracy"]
        exact_label = arithmetic_label(posit.PositFormat(16, 1), "exact")
        plam_label = arithmetic_label(posit.PositFormat(16, 1), "plam")
        if exact_label in accuracy and plam_label in accuracy:
            published_exact, published_plam = PUBLISHED_TOP1[task]
            rows.append([
                f"posit<16,1> top-1, exact -> PLAM, {title}",
                f"{published_exact:.4f} -> {published_plam:.4f}",
                f"{accuracy[exact_label]['top1']:.4f} -> {accuracy[plam_label]['top1']:.4f} "
                f"(FP32 {accuracy[FP32]['top1']:.4f}, {result['test_examples']:,} test images)",
            ])
        rows.append([f"PLAM relative error on the operands of {title}", "",
                     _error_cell(result["plam_error"])])
    mean, extreme = PUBLISHED_PLAM_ERROR
    rows.append([
        "PLAM relative error, posit<16,1> operands with uniform fractions",
        f"mean {100 * mean:+.2f}%, extreme {100 * extreme:+.1f}%",
        _error_cell(uniform),
    ])
    rows.append(["PLAM multiplier area, power and delay against exact posit multipliers",
                 "up to 72.86%, 81.79% and 17.01% lower",
                 "not measured: a hardware cost, outside an emulator"])
    return report_lib.markdown_table(["claim", "published", "measured here"], rows)


def _summary(results, config):
    lines = [
        "Float32 networks were trained once, then evaluated with the same parameters in "
        "each arithmetic. In posit rows every weight and activation is a posit, every "
        f"product is exact or PLAM, and each layer output is summed in the {config.accumulate} "
        "(bias included) and rounded once; ReLU and max pooling are exact on posits. "
        "PLAM errors compare the rounded posit<16,1> PLAM product with the exact product "
        "of the same posit operands; on network operands, tiny products keep few "
        "fraction bits, so their rounding widens the range beyond Mitchell's -11.1%.",
        "",
    ]
    for task, result in results.items():
        _, title, _ = TASKS[task]
        if "skipped" in result:
            lines.append(f"- **{task}** was skipped because its data was not found.")
            continue
        accuracy = result["accuracy"]
        subset = (f"a fixed {result['test_examples']:,} of {result['test_total']:,} test images"
                  if result["test_examples"] < result["test_total"]
                  else f"all {result['test_total']:,} test images")
        text = f"- **{title}** ({subset}): FP32 top-1 {_pct(accuracy[FP32]['top1'])}"
        posit_labels = [label for label in accuracy if label != FP32]
        if posit_labels:
            worst = min(posit_labels, key=lambda label: accuracy[label]["top1"])
            text += (f"; the lowest posit top-1 is {worst}'s, "
                     f"{_delta(accuracy[worst]['top1'], accuracy[FP32]['top1'])} pp from FP32")
        lines.append(text + ".")
    return "\n".join(lines)


def build_section(config, results, uniform):
    """Build the report section from every task's results and the uniform error statistics."""
    tables = {}
    for task, result in results.items():
        if "skipped" in result:
            tables[f"{task}: skipped"] = "```\n" + result["skipped"] + "\n```"
            continue
        _, title, _ = TASKS[task]
        tables[title] = _task_table(result, config)

    deviations = [
        "Both networks are trained here briefly from scratch; the CIFAR-10 network is "
        "LeNet-5 with 3 input channels, smaller than the paper's CIFAR-10 model.",
        "LeNet-5 uses ReLU and max pooling in place of scaled tanh and subsampling.",
        "Images are normalised in float32 before the first layer rounds them to posits.",
        "The CIFAR-10 mirror stores lossy JPEG re-encodings of the images.",
    ]
    if config.accumulate != "quire":
        deviations.append(f"Sums of products use {config.accumulate} accumulation, not the quire.")
    if any("skipped" not in r and r["test_examples"] < r["test_total"] for r in results.values()):
        deviations.append("Evaluation uses a fixed class-balanced subset of each test split.")

    return report_lib.Section(
        title="Posit inference with PLAM (Murillo et al., IEEE TETC 2022)",
        summary=_summary(results, config),
        comparison=_comparison(results, uniform),
        tables=tables,
        command=common.command_line(MODULE, config, PRESETS),
        config=config_lib.to_dict(config),
        deviations=deviations,
    )


def run(config, run_dir):
    """Run every enabled task and return the report section; writes results.json too."""
    arithmetics(config)  # rejects an invalid format before training
    posit_layers.check_accumulate(config.accumulate)
    work = common.experiment_dir(config, EXPERIMENT)
    results = {}
    for task in TASKS:
        task_config = getattr(config, task)
        if task_config.enabled:
            results[task] = run_task(config, task, task_config, work)
    if results and all("skipped" in r for r in results.values()):
        raise data_lib.DataNotFoundError(
            "no data set of this experiment was found:\n" + "\n".join(r["skipped"] for r in results.values())
        )

    fmt16 = posit.PositFormat(16, 1)
    uniform = plam_errors(*uniform_operands(config.error_samples, fmt16, config.seed), fmt16)
    out = Path(run_dir) / EXPERIMENT
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.write_json_atomic(out / "results.json", {"tasks": results, "uniform_plam_error": uniform})
    return build_section(config, results, uniform)


def main(argv=None):
    return common.run_standalone(MODULE, PRESETS, run, argv=argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
