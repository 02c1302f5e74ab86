"""Approximate multiplication in CNN inference, without retraining.

Trains float32 networks (a small CNN with batch norm on MNIST, ResNet-20 on CIFAR-10),
then evaluates each, with the same parameters, under every multiplier: exact float32,
bfloat16 (round to nearest even and truncation) and Mitch-w for w in {23, 8, 6, 4, 2},
biased and unbiased. Every product in the convolution and dense layers uses the
multiplier and every addition is float32. It also samples products from the networks'
real operands (layer inputs against weights) to measure each multiplier's relative error.

The published claims come from M. S. Kim, A. A. Del Barrio, H. Kim and N. Bagherzadeh,
"The Effects of Approximate Multiplication on Convolutional Neural Networks", IEEE
Transactions on Emerging Topics in Computing 10 (2022), arXiv:2007.10500: the ResNet
and Inception-v4 models with Mitch-w6 multiplication give top-5 errors within 0.2% of
the FP32 references without retraining, and bfloat16 works for the same reasons.

Deviations from the paper:
- ImageNet models (ResNet, Inception-v4) are replaced by a small CNN on MNIST and
  ResNet-20 on CIFAR-10, trained here from scratch for a few epochs at the `small`
  preset, so the FP32 baselines are lower than fully trained ones.
- The `small` preset evaluates a fixed class-balanced subset of each test split.
- Batch normalisation and bias additions stay exact float32; only the products of the
  convolution and dense layers are approximated.
- The CIFAR-10 mirror stores JPEG re-encodings, slightly lossier than the originals.

Run: `python -m scripts.approx_cnn --preset small` (see `--help` for every field).
"""

import dataclasses
import functools
import json
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import approx
from approx import layers as approx_layers
from harness import checkpoint as checkpoint_lib
from harness import config as config_lib
from harness import data as data_lib
from harness import metrics as metrics_lib
from harness import plots
from harness import report as report_lib
from harness import train as train_lib
from models import MnistCNN, resnet20
from scripts import common

logger = logging.getLogger(__name__)
MODULE = "scripts.approx_cnn"
EXPERIMENT = "approx_cnn"


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
    """Test examples evaluated, a fixed class-balanced subset; None for all."""
    eval_batch_size: int = 250
    """Batch size of evaluation."""
    error_images: int = 8
    """Test images whose layer operands are sampled for product error statistics."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The approximate-multiplication CNN experiment."""

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
    """Small CNN with batch norm on MNIST."""
    cifar10: TaskConfig = TaskConfig()
    """ResNet-20 on CIFAR-10."""
    widths: tuple[int, ...] = (23, 8, 6, 4, 2)
    """Fraction widths w of Mitch-w, each evaluated biased and unbiased."""
    error_samples: int = 200_000
    """Products sampled per network for relative-error statistics."""
    checkpoint_every: int = 200
    """Checkpoint interval in steps."""
    log_every: int = 50
    """Logging interval in steps."""


PRESETS = {
    "smoke": Config(
        preset="smoke",
        mnist=TaskConfig(steps=30, batch_size=32, eval_examples=64, eval_batch_size=32,
                         error_images=2),
        cifar10=TaskConfig(steps=4, batch_size=16, augment=True, eval_examples=16,
                           eval_batch_size=16, error_images=1),
        widths=(6,),
        error_samples=2_000,
        checkpoint_every=10,
        log_every=10,
    ),
    "small": Config(
        preset="small",
        mnist=TaskConfig(steps=469, learning_rate=0.05, eval_examples=2000),
        cifar10=TaskConfig(steps=1170, learning_rate=0.1, augment=True, eval_examples=1000),
    ),
    "paper": Config(
        preset="paper",
        mnist=TaskConfig(steps=4690, learning_rate=0.05),
        cifar10=TaskConfig(steps=64_000, learning_rate=0.1, weight_decay=1e-4, augment=True),
        checkpoint_every=1000,
        log_every=200,
    ),
}

TASKS = {
    # task name: (data set, title for reports, model factory)
    "mnist": ("mnist", "CNN with batch norm on MNIST", MnistCNN),
    "cifar10": ("cifar10", "ResNet-20 on CIFAR-10", resnet20),
}


# --------------------------------------------------------------------------------------
# Models and multipliers


def multipliers(widths):
    """Build the evaluated multipliers, exact first."""
    chosen = [
        approx.get_multiplier("exact"),
        approx.get_multiplier("bf16", mode="nearest"),
        approx.get_multiplier("bf16", mode="truncate"),
    ]
    for w in widths:
        chosen.append(approx.get_multiplier("mitchell", w=w, unbiased=False))
        chosen.append(approx.get_multiplier("mitchell", w=w, unbiased=True))
    return chosen


def build_model(task, multiplier=None):
    """Build the task's network, with conv and dense layers using `multiplier` when given."""
    _, _, factory = TASKS[task]
    if multiplier is None:
        return factory(conv=nn.Conv, dense=nn.Dense)
    return factory(
        conv=functools.partial(approx_layers.Conv, multiplier=multiplier),
        dense=functools.partial(approx_layers.Dense, multiplier=multiplier),
    )


def make_optimizer(task_config):
    """SGD with Nesterov momentum, warm-up then cosine decay, weight decay on kernels."""
    steps = task_config.steps
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=task_config.learning_rate,
        warmup_steps=max(1, steps // 50),
        decay_steps=steps,
    )

    def kernels_only(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "kernel", params
        )

    return optax.chain(
        optax.add_decayed_weights(task_config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )


# --------------------------------------------------------------------------------------
# Steps of one task


def _train_identity(config, task, task_config):
    fields = ("steps", "batch_size", "learning_rate", "weight_decay", "augment")
    return {"task": task, "seed": config.seed, **{f: getattr(task_config, f) for f in fields}}


def train_task(config, task, task_config, train_set, task_dir):
    """Train the float32 network (or resume it) and return its inference variables."""
    identity = _train_identity(config, task, task_config)
    checkpointer = checkpoint_lib.Checkpointer(
        task_dir / "train", config=identity, every=config.checkpoint_every
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
        make_optimizer(task_config),
        train_set,
        options,
        checkpointer=checkpointer,
        metrics_log=metrics_lib.MetricsLog(task_dir / "train" / "metrics.jsonl"),
    )
    checkpointer.close()
    return jax.device_get(state.variables())


def evaluate_multipliers(task, task_config, variables, test_set, chosen, eval_dir):
    """Top-1/top-5 of the network under each multiplier, cached per multiplier on disk."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for multiplier in chosen:
        path = eval_dir / f"{multiplier.label}.json"
        if path.exists():
            results[multiplier.label] = json.loads(path.read_text())
            continue
        model = build_model(task, multiplier)
        result = train_lib.evaluate(
            model, variables, test_set, batch_size=task_config.eval_batch_size,
            desc=f"{task} {multiplier.label}",
        )
        logger.info("%s %s: top-1 %.4f top-5 %.4f", task, multiplier.label, result["top1"],
                    result["top5"])
        checkpoint_lib.write_json_atomic(path, result)
        results[multiplier.label] = result
    return results


def capture_operands(task, variables, images, spec):
    """Per layer, the [M, K] and [K, N] matrices whose products the layer sums."""
    model = build_model(task, approx.get_multiplier("exact"))
    x = train_lib.normalize(jnp.asarray(images), spec)
    _, state = model.apply(variables, x, train=False, mutable=[approx_layers.OPERANDS])
    captured = state[approx_layers.OPERANDS]
    flat = jax.tree_util.tree_flatten_with_path(captured)[0]
    layers = {}
    for path, value in flat:
        keys = [getattr(p, "key", None) for p in path if hasattr(p, "key")]
        layer, side = "/".join(keys[:-1]), keys[-1]
        layers.setdefault(layer, {})[side] = np.asarray(value, np.float32)
    return {name: (sides["lhs"], sides["rhs"]) for name, sides in sorted(layers.items())}


def sample_products(operands, count, seed):
    """Sample (a, b) operand pairs of real products, layers weighted by product count.

    Returns:
      a, b: float32 [count'] with count' close to `count`.
    """
    rng = np.random.default_rng(seed)
    sizes = {name: lhs.shape[0] * lhs.shape[1] * rhs.shape[1] for name, (lhs, rhs) in operands.items()}
    total = sum(sizes.values())
    a_parts, b_parts = [], []
    for name, (lhs, rhs) in operands.items():
        n = max(1, round(count * sizes[name] / total))
        m = rng.integers(0, lhs.shape[0], n)
        k = rng.integers(0, lhs.shape[1], n)
        j = rng.integers(0, rhs.shape[1], n)
        a_parts.append(lhs[m, k])
        b_parts.append(rhs[k, j])
    return np.concatenate(a_parts), np.concatenate(b_parts)


def product_errors(a, b, chosen):
    """Relative error statistics of each multiplier on operand pairs (a, b).

    Products with a zero operand are exact for every multiplier here and are left out
    of the statistics; their share is reported as `zero_fraction`.
    """
    exact = a.astype(np.float64) * b.astype(np.float64)
    nonzero = exact != 0
    stats = {}
    for multiplier in chosen:
        products = np.asarray(multiplier(jnp.asarray(a), jnp.asarray(b)), np.float64)
        relative = (products[nonzero] - exact[nonzero]) / exact[nonzero]
        stats[multiplier.label] = {
            "mean": float(relative.mean()),
            "std": float(relative.std()),
            "min": float(relative.min()),
            "max": float(relative.max()),
            "zero_fraction": float(1 - nonzero.mean()),
            "samples": int(nonzero.sum()),
        }
    return stats


def load_and_train(config, task, task_config, work):
    """Load a task's data and train (or resume) its float32 network.

    Returns:
      (variables, train_set, test_set, task_dir), or None when the data is missing.
    """
    dataset_name, _, _ = TASKS[task]
    try:
        train_set = data_lib.load_image_dataset(dataset_name, "train", data_dir=config.data_dir)
        test_set = data_lib.load_image_dataset(dataset_name, "test", data_dir=config.data_dir)
    except data_lib.DataNotFoundError as error:
        logger.warning("%s skipped: %s", task, error)
        return str(error)

    identity = _train_identity(config, task, task_config)
    task_dir = Path(work) / f"{task}-{config_lib.config_hash(identity, exclude=())}"
    variables = train_task(config, task, task_config, train_set, task_dir)
    return variables, train_set, test_set, task_dir


def run_task(config, task, task_config, work, run_dir):
    """Train, evaluate and measure one task; returns its results, or a skip note."""
    trained = load_and_train(config, task, task_config, work)
    if isinstance(trained, str):
        return {"skipped": trained}
    variables, train_set, test_set, task_dir = trained

    test_subset = test_set.take(task_config.eval_examples)
    chosen = multipliers(config.widths)
    eval_dir = task_dir / f"eval-balanced-{len(test_subset)}"
    accuracy = evaluate_multipliers(task, task_config, variables, test_subset, chosen, eval_dir)

    images = test_set.take(task_config.error_images).images
    operands = capture_operands(task, variables, images, test_set.spec)
    a, b = sample_products(operands, config.error_samples, config.seed)
    errors = product_errors(a, b, chosen)

    return {
        "train_source": train_set.source,
        "test_source": test_set.source,
        "test_examples": len(test_subset),
        "test_total": len(test_set),
        "accuracy": accuracy,
        "errors": errors,
    }


# --------------------------------------------------------------------------------------
# Report


def _pct(value):
    return f"{100 * value:.2f}%"


def _delta(value, reference):
    return f"{100 * (value - reference):+.2f}"


def _task_table(result, chosen):
    reference = result["accuracy"]["FP32"]
    rows = []
    for multiplier in chosen:
        acc = result["accuracy"][multiplier.label]
        err = result["errors"][multiplier.label]
        rows.append([
            multiplier.label,
            _pct(acc["top1"]),
            _pct(acc["top5"]),
            _delta(acc["top1"], reference["top1"]),
            _delta(acc["top5"], reference["top5"]),
            f"{100 * err['mean']:+.3f}%",
            f"{100 * err['min']:+.3f}%",
            f"{100 * err['max']:+.3f}%",
        ])
    headers = ["multiplier", "top-1", "top-5", "Δ top-1 (pp)", "Δ top-5 (pp)",
               "mean rel. error", "min rel. error", "max rel. error"]
    return report_lib.markdown_table(headers, rows)


def _plot_task(task, result, widths, run_dir):
    accuracy = result["accuracy"]
    series = {
        "Mitch-w (biased)": [accuracy[f"Mitch-w{w}"]["top1"] * 100 for w in widths],
        "Mitch-w (unbiased)": [accuracy[f"Mitch-w{w}-unbiased"]["top1"] * 100 for w in widths],
    }
    references = {label: accuracy[label]["top1"] * 100 for label in ("FP32", "bf16", "bf16-trunc")}
    path = run_dir / EXPERIMENT / f"{task}_accuracy_vs_w.png"
    _, title, _ = TASKS[task]
    plots.line_plot(
        path, list(widths), series, xlabel="fraction bits kept (w)", ylabel="top-1 accuracy (%)",
        title=f"{title}: accuracy against Mitch-w width", reference_lines=references,
        xticks=widths,
    )
    return path.relative_to(run_dir)


def _summary(results, config):
    lines = [
        "Float32 networks were trained once, then evaluated without retraining with every "
        "product of their convolution and dense layers replaced by the multiplier named in "
        "each row; all additions are float32. Relative errors are measured on products "
        f"sampled from the layers' real operands ({config.error_samples:,} samples per "
        "network, products with a zero operand excluded).",
        "",
    ]
    for task, result in results.items():
        _, title, _ = TASKS[task]
        if "skipped" in result:
            lines.append(f"- **{task}** was skipped because its data was not found.")
            continue
        accuracy = result["accuracy"]
        reference = accuracy["FP32"]
        w6 = accuracy.get("Mitch-w6")
        bf16 = accuracy["bf16"]
        subset = (
            f"a class-balanced {result['test_examples']:,} of {result['test_total']:,} test images"
            if result["test_examples"] < result["test_total"]
            else f"all {result['test_total']:,} test images"
        )
        text = (
            f"- **{title}** ({subset}): FP32 top-1 {_pct(reference['top1'])}, "
            f"top-5 {_pct(reference['top5'])}; bfloat16 changes top-1 by "
            f"{_delta(bf16['top1'], reference['top1'])} pp"
        )
        if w6 is not None:
            text += (
                f"; Mitch-w6 changes top-1 by {_delta(w6['top1'], reference['top1'])} pp and "
                f"top-5 by {_delta(w6['top5'], reference['top5'])} pp"
            )
        lowest = min(
            (label for label in accuracy if label.startswith("Mitch")),
            key=lambda label: accuracy[label]["top1"],
            default=None,
        )
        if lowest is not None:
            text += (
                f"; the lowest Mitch-w top-1 is {lowest}'s, "
                f"{_delta(accuracy[lowest]['top1'], reference['top1'])} pp from FP32"
            )
        lines.append(text + ".")
    return "\n".join(lines)


def _comparison(results):
    rows = []
    for task, result in results.items():
        if "skipped" in result:
            continue
        _, title, _ = TASKS[task]
        accuracy = result["accuracy"]
        reference = accuracy["FP32"]
        if "Mitch-w6" in accuracy:
            rows.append([
                "Mitch-w6 top-5 change against FP32, no retraining",
                "within 0.2% (ResNet, Inception-v4, ImageNet)",
                f"{_delta(accuracy['Mitch-w6']['top5'], reference['top5'])} pp "
                f"(top-1 {_delta(accuracy['Mitch-w6']['top1'], reference['top1'])} pp), "
                f"{title}",
            ])
        rows.append([
            "bfloat16 multiplication works on CNNs",
            "accuracy close to FP32",
            f"top-1 {_delta(accuracy['bf16']['top1'], reference['top1'])} pp, "
            f"top-5 {_delta(accuracy['bf16']['top5'], reference['top5'])} pp, {title}",
        ])
        errors = result["errors"]
        if "Mitch-w23" in errors:
            rows.append([
                "Mitchell relative error bounds",
                "between -11.1% and 0 (Mitchell 1962)",
                f"mean {100 * errors['Mitch-w23']['mean']:+.2f}%, "
                f"min {100 * errors['Mitch-w23']['min']:+.2f}%, "
                f"max {100 * errors['Mitch-w23']['max']:+.2f}% on the operands of {title}",
            ])
    rows.append([
        "Mitch-w6 MAC energy against bfloat16",
        "up to 80% lower",
        "not measured: a hardware cost, outside an emulator",
    ])
    return report_lib.markdown_table(["claim", "published", "measured here"], rows)


def build_section(config, results, run_dir):
    """Build the report section from the results of every task."""
    chosen = multipliers(config.widths)
    tables, plot_paths = {}, []
    for task, result in results.items():
        if "skipped" in result:
            tables[f"{task}: skipped"] = "```\n" + result["skipped"] + "\n```"
            continue
        _, title, _ = TASKS[task]
        tables[title] = _task_table(result, chosen)
        path = _plot_task(task, result, config.widths, run_dir)
        plot_paths.append((f"{title}: top-1 accuracy against w", str(path)))

    deviations = [
        "ImageNet ResNet and Inception-v4 are replaced by a CNN on MNIST and ResNet-20 on "
        "CIFAR-10, trained here briefly from scratch.",
        "Batch normalisation and bias additions stay exact float32.",
        "The CIFAR-10 mirror stores lossy JPEG re-encodings of the images.",
    ]
    if any("skipped" not in r and r["test_examples"] < r["test_total"] for r in results.values()):
        deviations.append("Evaluation uses a fixed class-balanced subset of each test split.")

    return report_lib.Section(
        title="Approximate multiplication in CNN inference (Kim et al., IEEE TETC 2022)",
        summary=_summary(results, config),
        comparison=_comparison(results),
        tables=tables,
        plots=plot_paths,
        command=common.command_line(MODULE, config, PRESETS),
        config=config_lib.to_dict(config),
        deviations=deviations,
    )


def run(config, run_dir):
    """Run every enabled task and return the report section; writes results.json too."""
    for w in config.widths:
        approx.get_multiplier("mitchell", w=w)  # rejects an invalid width before training
    work = common.experiment_dir(config, EXPERIMENT)
    results = {}
    for task in TASKS:
        task_config = getattr(config, task)
        if task_config.enabled:
            results[task] = run_task(config, task, task_config, work, run_dir)
    if results and all("skipped" in r for r in results.values()):
        raise data_lib.DataNotFoundError(
            "no data set of this experiment was found:\n" + "\n".join(r["skipped"] for r in results.values())
        )

    out = Path(run_dir) / EXPERIMENT
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.write_json_atomic(out / "results.json", results)
    return build_section(config, results, run_dir)


def main(argv=None):
    return common.run_standalone(MODULE, PRESETS, run, argv=argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
