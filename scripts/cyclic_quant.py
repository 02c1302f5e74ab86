"""Cyclic training with multiple quantization steps (CTMQ) against its baselines.

Pretrains a float32 network per seed (ResNet-20 on CIFAR-10; a small CNN on MNIST at the
`smoke` preset), then fine-tunes copies of it with the same total number of epochs by:

- float32: the float model, trained on;
- direct: the target bit width from the first step;
- progressive: start_bits, start_bits - 1, ..., target bits, each step initialised by
  the previous one (multiple quantization steps without cycles);
- CTMQ with 1, 2 and 3 cycles: the progressive descent, then per cycle the float32
  (accurate) model trained from the low-bit weights and quantized down again.

Every method starts from the same pretrained weights and trains on the same batches in
the same order. Kernels are quantized except those of the first and last layers; 1-bit steps
binarize each kernel to +-mean|w| per output channel, and steps of 2 or more bits use
DoReFa. Top-1 and top-5 are reported as mean and standard deviation over the seeds.

The published claim: H. Kim, J. Shin and A. A. Del Barrio, "CTMQ: Cyclic Training of
Convolutional Neural Networks with Multiple Quantization Steps", arXiv:2206.12794
(2022): CTMQ raises the top-1 and top-5 accuracies of a binarized ResNet-18 on ImageNet
by 5.80 and 6.85 percentage points over training the binary model directly.

Deviations from the paper:
- ResNet-20 on CIFAR-10 (and a small CNN on MNIST at `smoke`) instead of ResNet-18 on
  ImageNet; CIFAR-10 top-5 is close to 100% and separates the methods little.
- Only weights are quantized unless `--quantize-activations` is set; the abstract does
  not say whether activations were binarized.
- The `small` preset trims the paper's scale to fit in 45 minutes on a 2-core CPU:
  an "epoch" is 50 optimiser steps of batch 64 (3,200 images, not a full pass), the
  float model is pretrained for 6 such epochs and every method fine-tunes for 2, the
  descent starts at 3 bits, CTMQ runs 1 and 2 cycles (3 only at `paper`), the 2-bit
  target runs only direct training and CTMQ with one cycle, and evaluation uses a
  fixed class-balanced subset of 1,000 test images. Its accuracies are far below trained ResNet-20 (about 92%).
- Batch-norm statistics are re-estimated on a few training batches after every
  fine-tuning step, because steps this short leave the running averages behind the
  weights, DoReFa's above all (it maps weights to [-1, 1]).
- How a cycle descends (from start_bits again, through every width) and the learning
  rate of each step are our choices; see `quant.cyclic`.

Run: `python -m scripts.cyclic_quant --preset small` (see `--help` for every field).
"""

import dataclasses
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from harness import checkpoint as checkpoint_lib
from harness import config as config_lib
from harness import data as data_lib
from harness import mesh as mesh_lib
from harness import metrics as metrics_lib
from harness import plots
from harness import report as report_lib
from harness import train as train_lib
from models import MnistCNN, resnet20
from quant import cyclic, transforms
from scripts import common

logger = logging.getLogger(__name__)
MODULE = "scripts.cyclic_quant"
EXPERIMENT = "cyclic_quant"
PAPER = {"top1": 5.80, "top5": 6.85}  # percentage points over direct binarization
WEIGHT_QUANTIZERS = ("dorefa", "uniform_symmetric")

TASKS = {
    # data set: (title for reports, model factory, layers kept float)
    "mnist": ("CNN with batch norm on MNIST", MnistCNN, ("conv0", "classifier")),
    "cifar10": ("ResNet-20 on CIFAR-10", resnet20, ("stem", "classifier")),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The CTMQ experiment."""

    preset: str = "small"
    """Preset: smoke, small or paper."""
    seed: int = 0
    """First seed. Seeds seed, seed + 1, ... each pretrain and fine-tune their own model."""
    seeds: int = 3
    """Number of seeds."""
    data_dir: str | None = None
    """Folder with <name>/<split>.parquet; default JAXLAB_DATA_DIR, then hub, then registry copy."""
    workdir: str = "results/work"
    """Folder for checkpoints (reused when the command is rerun)."""
    results_dir: str = "results"
    """Folder under which each run writes a new <timestamp>-<preset> report folder."""
    dataset: str = "cifar10"
    """Data set and network: cifar10 (ResNet-20) or mnist (small CNN)."""
    batch_size: int = 128
    """Training batch size (a multiple of the device count)."""
    epoch_steps: int | None = None
    """Optimiser steps per schedule epoch; None for a full pass over the training set."""
    pretrain_epochs: float = 160.0
    """Epochs of float32 pretraining."""
    budget_epochs: float = 60.0
    """Fine-tuning epochs of every method, split evenly over its schedule's steps."""
    start_bits: int = 4
    """Bit width of the first progressive step; above every target."""
    targets: tuple[int, ...] = (1, 2)
    """Target bit widths."""
    cycles: tuple[int, ...] = (1, 2, 3)
    """CTMQ cycle counts compared for the first target."""
    other_target_cycles: tuple[int, ...] | None = None
    """CTMQ cycle counts for the other targets; None for the same as `cycles`."""
    accurate: str = "float32"
    """Accurate model of each cycle: float32, or plus_one for target + 1 bits."""
    weight_quantizer: str = "dorefa"
    """Quantizer of steps with 2 or more bits: dorefa or uniform_symmetric."""
    quantize_activations: bool = False
    """Also quantize activations (DoReFa, clipped to [0, 1]) to the step's bit width."""
    learning_rate: float = 0.1
    """Peak learning rate of pretraining (SGD, Nesterov momentum 0.9, cosine decay)."""
    finetune_learning_rate: float = 0.01
    """Learning rate at the start of every fine-tuning step, decayed to 0 by a cosine."""
    weight_decay: float = 5e-4
    """L2 weight decay on the float master kernels."""
    augment: bool = True
    """Random crops and horizontal flips during training."""
    bn_batches: int = 8
    """Training batches that re-estimate batch-norm statistics after every fine-tuning step; 0 keeps the running averages."""
    eval_examples: int | None = None
    """Test examples evaluated, a fixed class-balanced subset of the split; None for all."""
    eval_batch_size: int = 250
    """Batch size of evaluation."""
    checkpoint_every: int = 500
    """Checkpoint interval of pretraining in steps (fine-tuning saves after every step)."""
    log_every: int = 50
    """Logging interval in steps."""


PRESETS = {
    "smoke": Config(
        preset="smoke", seeds=2, dataset="mnist", batch_size=32, epoch_steps=10,
        pretrain_epochs=3, budget_epochs=2, start_bits=3, targets=(1,), cycles=(1, 2),
        augment=False, learning_rate=0.05, finetune_learning_rate=0.02, eval_examples=128,
        eval_batch_size=64, checkpoint_every=10, log_every=10,
    ),
    # About 1,000 optimiser steps of batch 64 per seed. The three seeds took 36 minutes
    # on a shared 2-core x86_64 VM (JAX 0.10.2 on CPU).
    "small": Config(
        preset="small", batch_size=64, epoch_steps=50, pretrain_epochs=6, budget_epochs=2,
        start_bits=3, targets=(1, 2), cycles=(1, 2), other_target_cycles=(1,), bn_batches=4,
        eval_examples=1000, checkpoint_every=100,
    ),
    "paper": Config(preset="paper"),
}


# --------------------------------------------------------------------------------------
# Methods


def validate(config):
    """Raise ValueError for a config that cannot run, before any training."""
    if config.dataset not in TASKS:
        raise ValueError(f"dataset={config.dataset!r} is not valid; choose one of {tuple(TASKS)}.")
    if config.weight_quantizer not in WEIGHT_QUANTIZERS:
        raise ValueError(f"weight_quantizer={config.weight_quantizer!r} is not valid; choose one of {WEIGHT_QUANTIZERS}.")
    if config.seeds < 1:
        raise ValueError(f"seeds={config.seeds} must be at least 1.")
    if not config.targets:
        raise ValueError("targets is empty; give at least one target bit width.")
    for target in config.targets:
        cyclic.Schedule(start_bits=config.start_bits, target_bits=target)  # checks both widths
        if target == config.start_bits:
            raise ValueError(f"start_bits={config.start_bits} must exceed every target, got target {target}.")
    for epochs, name in ((config.pretrain_epochs, "pretrain_epochs"), (config.budget_epochs, "budget_epochs")):
        if not epochs > 0:
            raise ValueError(f"{name}={epochs} must be positive.")
    methods(config)  # checks cycle counts and the accurate model


def methods(config):
    """Method name -> schedule (or float32 steps), all with `budget_epochs` epochs."""
    chosen = {"float32": cyclic.float_steps(config.budget_epochs)}
    for index, target in enumerate(config.targets):
        cycles = config.cycles if index == 0 or config.other_target_cycles is None else config.other_target_cycles
        base = cyclic.Schedule(start_bits=config.start_bits, target_bits=target, accurate=config.accurate)
        chosen[f"direct-{target}bit"] = cyclic.Schedule(start_bits=target, target_bits=target).with_total_epochs(
            config.budget_epochs)
        if index == 0 or config.other_target_cycles is None:
            chosen[f"progressive-{target}bit"] = base.with_total_epochs(config.budget_epochs)
        for count in cycles:
            schedule = dataclasses.replace(base, cycles=count).with_total_epochs(config.budget_epochs)
            chosen[f"ctmq{count}-{target}bit"] = schedule
    return chosen


def schedule_steps(schedule):
    return schedule.steps() if isinstance(schedule, cyclic.Schedule) else tuple(schedule)


# --------------------------------------------------------------------------------------
# Models, quantizers and compiled steps


def build_model(config, bits):
    """Build the task's network, with DoReFa-quantized ReLUs at `bits` if activations are quantized."""
    _, factory, _ = TASKS[config.dataset]
    if config.quantize_activations and bits is not None:
        return factory(activation=transforms.quantized_activation(bits))
    return factory()


def build_policy(config, bits):
    """Quantize every kernel but the first and last layers': binarize at 1 bit, else the weight quantizer."""
    _, _, float_layers = TASKS[config.dataset]
    if bits == 1:
        return transforms.kernel_policy("binarize", 1, float_layers=float_layers, channel_axis=-1)
    return transforms.kernel_policy(config.weight_quantizer, bits, float_layers=float_layers)


def make_quantizer(config):
    """Return bits -> (variables -> variables) that quantizes variables["params"] by `build_policy`."""

    def for_bits(bits):
        policy = build_policy(config, bits)

        def quantize(variables):
            return {**variables, "params": transforms.quantize_params(variables["params"], policy)}

        return quantize

    return for_bits


def kernels_only(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def fine_tune_optimizer(config):
    """Weight decay on kernels and Nesterov momentum; the learning rate is applied by the step."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=kernels_only),
        optax.trace(decay=0.9, nesterov=True),
    )


def make_train_step(model, quantize, tx, spec, *, augment):
    """Build a jitted step (state, images, labels, key, learning_rate) -> (state, metrics).

    `quantize` maps {"params", "batch_stats"} to the variables the forward pass uses, so
    gradients reach the float master weights through the quantizers' straight-through
    estimators. The learning rate is an argument, so one compilation serves every step.
    """

    def loss_fn(params, batch_stats, x, labels):
        variables = quantize({"params": params, "batch_stats": batch_stats})
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return train_lib.cross_entropy(logits, labels), (logits, updates["batch_stats"])

    def step(state, images, labels, key, learning_rate):
        x = train_lib.normalize(images, spec)
        if augment:
            x = train_lib.random_crop_flip(key, x)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, state.batch_stats, x, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda p, u: p - learning_rate * u, state.params, updates)
        metrics = {"loss": loss, "accuracy": train_lib.topk_correct(logits, labels, 1).mean()}
        return train_lib.TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(model, quantize, spec):
    """Build a jitted step (variables, images, labels, mask) -> summed loss and top-1/top-5 counts."""

    def step(variables, images, labels, mask):
        logits = model.apply(quantize(variables), train_lib.normalize(images, spec), train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weight = mask.astype(jnp.float32)
        return {
            "loss": jnp.sum(losses * weight),
            "top1": jnp.sum(train_lib.topk_correct(logits, labels, 1) * weight),
            "top5": jnp.sum(train_lib.topk_correct(logits, labels, 5) * weight),
            "count": jnp.sum(weight),
        }

    return jax.jit(step)


def make_batch_stats_step(model, quantize, spec):
    """Build a jitted step (variables, images) -> batch_stats after one training-mode forward pass."""

    def step(variables, images):
        x = train_lib.normalize(images, spec)
        _, updates = model.apply(quantize(variables), x, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    return jax.jit(step)


def reestimate_batch_stats(variables, batches, stats_step):
    """Replace the running batch-norm statistics by their mean over `batches`.

    A step that changes the weights' scale (DoReFa maps weights to [-1, 1]) leaves running
    averages that lag for many optimiser steps, and fine-tuning steps here are short.
    Flax updates a statistic as m * running + (1 - m) * batch, so one pass from zeros
    gives (1 - m) * batch, and a probe pass from ones gives m.
    """
    zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["batch_stats"])
    ones = jax.tree_util.tree_map(jnp.ones_like, variables["batch_stats"])
    from_zeros = stats_step({**variables, "batch_stats": zeros}, batches[0])
    from_ones = stats_step({**variables, "batch_stats": ones}, batches[0])
    momentum = jax.tree_util.tree_map(lambda a, b: b - a, from_zeros, from_ones)
    total = None
    for images in batches:
        scaled = stats_step({**variables, "batch_stats": zeros}, images)
        batch = jax.tree_util.tree_map(lambda r, m: r / (1 - m), scaled, momentum)
        total = batch if total is None else jax.tree_util.tree_map(jnp.add, total, batch)
    return jax.tree_util.tree_map(lambda t: t / len(batches), total)


class CompiledSteps:
    """Jitted train and eval steps, compiled once per bit width and shared by every seed and method."""

    def __init__(self, config, spec):
        self.config = config
        self.spec = spec
        self.tx = fine_tune_optimizer(config)
        self._train = {}
        self._eval = {}
        self._stats = {}

    def batch_stats_step(self, quantizer):
        if quantizer.bits not in self._stats:
            self._stats[quantizer.bits] = make_batch_stats_step(
                build_model(self.config, quantizer.bits), quantizer, self.spec)
        return self._stats[quantizer.bits]

    def train_step(self, quantizer):
        if quantizer.bits not in self._train:
            self._train[quantizer.bits] = make_train_step(
                build_model(self.config, quantizer.bits), quantizer, self.tx, self.spec,
                augment=self.config.augment)
        return self._train[quantizer.bits]

    def eval_step(self, quantizer):
        if quantizer.bits not in self._eval:
            self._eval[quantizer.bits] = make_eval_step(
                build_model(self.config, quantizer.bits), quantizer, self.spec)
        return self._eval[quantizer.bits]


# --------------------------------------------------------------------------------------
# Training and evaluation of one seed


def epoch_steps(config, train_set):
    return config.epoch_steps or len(train_set) // config.batch_size


def pretrain(config, seed, train_set, seed_dir):
    """Train the float32 model of one seed (or resume it) and return its variables."""
    steps = round(config.pretrain_epochs * epoch_steps(config, train_set))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=max(1, steps // 50), decay_steps=steps)
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )
    identity = {"seed": seed, "steps": steps, **_training_fields(config)}
    checkpointer = checkpoint_lib.Checkpointer(seed_dir / "pretrain", config=identity, every=config.checkpoint_every)
    options = train_lib.FitOptions(steps=steps, batch_size=config.batch_size, seed=seed, log_every=config.log_every,
                                   augment=config.augment, desc=f"seed {seed} pretrain")
    state = train_lib.fit(build_model(config, None), tx, train_set, options, checkpointer=checkpointer,
                          metrics_log=metrics_lib.MetricsLog(seed_dir / "pretrain" / "metrics.jsonl"))
    checkpointer.close()
    return {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}


def make_train_function(config, seed, train_set, compiled, offset):
    """Return the `train(variables, quantizer, epochs)` of one seed for `quant.cyclic.run_schedule`.

    Step t of the schedule trains on the global batches offset + round(first_epoch * E)
    onwards (E optimiser steps per epoch), so every method trains on the same data in the
    same order, continuing after the pretraining batches.
    """
    per_epoch = epoch_steps(config, train_set)
    mesh = mesh_lib.data_mesh()
    step_key = jax.random.fold_in(jax.random.key(seed), 1)

    def train(variables, quantizer, epochs):
        first = round(quantizer.step.first_epoch * per_epoch)
        count = round((quantizer.step.first_epoch + epochs) * per_epoch) - first
        train_step = compiled.train_step(quantizer)
        # Copies, because the step donates its input buffers and the caller keeps `variables`.
        params = jax.tree_util.tree_map(jnp.array, variables["params"])
        batch_stats = jax.tree_util.tree_map(jnp.array, variables["batch_stats"])
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, compiled.tx.init(params))
        state = mesh_lib.replicate(mesh, state)
        started = time.perf_counter()
        for index in range(count):
            global_step = offset + first + index
            images, labels = data_lib.train_batch(train_set, config.batch_size, seed=seed, step=global_step)
            images, labels = mesh_lib.shard_batch(mesh, images, labels)
            learning_rate = config.finetune_learning_rate * 0.5 * (1 + math.cos(math.pi * index / count))
            state, metrics = train_step(state, images, labels, jax.random.fold_in(step_key, global_step),
                                        jnp.float32(learning_rate))
            if (index + 1) % config.log_every == 0 or index + 1 == count:
                _log_progress(quantizer, index + 1, count, metrics, started)
        trained = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
        if config.bn_batches:
            following = offset + first + count
            batches = [data_lib.train_batch(train_set, config.batch_size, seed=seed, step=following + i)[0]
                       for i in range(config.bn_batches)]
            stats = reestimate_batch_stats(trained, batches, compiled.batch_stats_step(quantizer))
            trained["batch_stats"] = jax.device_get(stats)
        return trained

    return train


def _log_progress(quantizer, done, count, metrics, started):
    values = {name: float(value) for name, value in jax.device_get(metrics).items()}
    if not np.isfinite(values["loss"]):
        raise FloatingPointError(
            f"fine-tuning loss {values['loss']} at step {done} of schedule step {quantizer.step.index}; "
            "lower --finetune-learning-rate."
        )
    rate = done / max(time.perf_counter() - started, 1e-9)
    logger.info("  %s %d/%d loss %.4f accuracy %.3f (%.1f steps/s)", quantizer.step.label, done, count,
                values["loss"], values["accuracy"], rate)


def make_evaluate_function(config, test_set, compiled):
    """Return `evaluate(variables, quantizer)` -> top1, top5 and loss on the evaluated test images."""

    def evaluate(variables, quantizer):
        eval_step = compiled.eval_step(quantizer)
        totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
        for images, labels, mask in data_lib.eval_batches(test_set, config.eval_batch_size):
            sums = jax.device_get(eval_step(variables, images, labels, mask))
            for name in totals:
                totals[name] += float(sums[name])
        count = totals.pop("count")
        return {name: value / count for name, value in totals.items()}

    return evaluate


def _training_fields(config):
    fields = ("dataset", "batch_size", "epoch_steps", "pretrain_epochs", "learning_rate", "weight_decay", "augment")
    return {name: getattr(config, name) for name in fields}


def run_seed(config, seed, data, compiled, seed_dir):
    """Pretrain one seed and fine-tune it by every method; return each method's history."""
    train_set, test_set = data
    variables = pretrain(config, seed, train_set, seed_dir)
    evaluate = make_evaluate_function(config, test_set, compiled)
    offset = round(config.pretrain_epochs * epoch_steps(config, train_set))
    train = make_train_function(config, seed, train_set, compiled, offset)
    quantizer_for = make_quantizer(config)
    histories = {}
    for name, schedule in methods(config).items():
        logger.info("seed %d: %s (%d steps)", seed, name, len(schedule_steps(schedule)))
        result = cyclic.run_schedule(schedule, train, variables, make_quantizer=quantizer_for,
                                     directory=seed_dir / name, evaluate=evaluate, keep=1)
        histories[name] = list(result.history)
    pretrained = evaluate(variables, cyclic.StepQuantizer(cyclic.float_steps(1)[0], lambda v: v))
    return {"pretrained": pretrained, "methods": histories}


# --------------------------------------------------------------------------------------
# Summary statistics


def final_metric(history, name):
    return history[-1][name]


def mean_std(values):
    """(mean, sample standard deviation) in percent; the deviation is 0 for one value."""
    values = 100 * np.asarray(values, np.float64)
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), spread


def summarize(results, config):
    """Per method: mean and spread of final top-1/top-5, and paired gains over direct."""
    seeds = list(results)
    names = list(methods(config))
    summary = {}
    for name in names:
        row = {}
        for metric in ("top1", "top5"):
            row[metric] = mean_std([final_metric(results[s]["methods"][name], metric) for s in seeds])
        target = name.rsplit("-", 1)[-1]
        direct = f"direct-{target}"
        if name != "float32" and name != direct:
            for metric in ("top1", "top5"):
                gains = [final_metric(results[s]["methods"][name], metric)
                         - final_metric(results[s]["methods"][direct], metric) for s in seeds]
                row[f"gain_{metric}"] = mean_std(gains)
        row["steps"] = len(results[seeds[0]]["methods"][name])
        summary[name] = row
    return summary


# --------------------------------------------------------------------------------------
# Report


def _cell(pair, signed=False):
    mean, spread = pair
    return f"{mean:+.2f} ± {spread:.2f}" if signed else f"{mean:.2f} ± {spread:.2f}"


def _method_table(summary, config, target):
    rows = []
    for name, row in summary.items():
        if name != "float32" and not name.endswith(f"-{target}bit"):
            continue
        rows.append([
            name, row["steps"], f"{config.budget_epochs:g}", _cell(row["top1"]), _cell(row["top5"]),
            _cell(row["gain_top1"], signed=True) if "gain_top1" in row else "",
            _cell(row["gain_top5"], signed=True) if "gain_top5" in row else "",
        ])
    headers = ["method", "steps", "epochs", "top-1 (%)", "top-5 (%)", "Δ top-1 vs direct (pp)",
               "Δ top-5 vs direct (pp)"]
    return report_lib.markdown_table(headers, rows)


def _comparison(summary, config, title):
    target = config.targets[0]
    ctmq = [name for name in summary if name.startswith("ctmq") and name.endswith(f"-{target}bit")]
    rows = []
    for metric, label in (("top1", "top-1"), ("top5", "top-5")):
        measured = "; ".join(f"{name.split('-')[0].removeprefix('ctmq')} cycle(s): "
                             f"{_cell(summary[name]['gain_' + metric], signed=True)} pp" for name in ctmq)
        rows.append([
            f"CTMQ {label} gain over training the {target}-bit model directly",
            f"{PAPER[metric]:+.2f} pp (binarized ResNet-18, ImageNet)" if target == 1 else
            f"{PAPER[metric]:+.2f} pp (for the binarized ResNet-18 on ImageNet)",
            f"{measured} ({title}, {target}-bit weights, mean ± std over {config.seeds} seeds)",
        ])
    return report_lib.markdown_table(["claim", "published", "measured here"], rows)


def _plot_schedules(results, config, target, run_dir):
    """Mean top-1 over seeds after every schedule step, against the epochs trained so far."""
    seeds = list(results)
    curves = {}
    for name in methods(config):
        if name == "float32" or not name.endswith(f"-{target}bit"):
            continue
        histories = [results[s]["methods"][name] for s in seeds]
        xs = [r["first_epoch"] + r["epochs"] for r in histories[0]]
        ys = [100 * np.mean([h[i]["top1"] for h in histories]) for i in range(len(xs))]
        curves[name] = (xs, ys)
    float_top1 = 100 * np.mean([final_metric(results[s]["methods"]["float32"], "top1") for s in seeds])
    pretrained = 100 * np.mean([results[s]["pretrained"]["top1"] for s in seeds])
    title, _, _ = TASKS[config.dataset]
    path = run_dir / EXPERIMENT / f"schedule_top1_{target}bit.png"
    plots.curves_plot(
        path, curves, xlabel="fine-tuning epochs", ylabel="top-1 accuracy (%)",
        title=f"{title}: top-1 after each step, {target}-bit target",
        reference_lines={"float32 after fine-tuning": float_top1, "pretrained float32": pretrained},
    )
    return str(path.relative_to(run_dir))


def _summary_text(summary, results, config, title, sources):
    pretrained = mean_std([results[s]["pretrained"]["top1"] for s in results])
    epoch = f"{config.epoch_steps} optimiser steps" if config.epoch_steps else "a full pass"
    activations = ("Activations are quantized to the same width." if config.quantize_activations
                   else "Activations stay float.")
    lines = [
        f"{title}, {config.seeds} seeds. Each seed pretrains a float32 model for "
        f"{config.pretrain_epochs:g} epochs (top-1 {_cell(pretrained)} %), and every method then "
        f"fine-tunes a copy for {config.budget_epochs:g} epochs, an epoch being {epoch} of batch "
        f"{config.batch_size}. Kernels of every layer but the first and last are quantized: 1-bit "
        f"steps binarize per output channel and wider steps use {config.weight_quantizer}. {activations}",
        "",
        f"- float32 after the same fine-tuning: top-1 {_cell(summary['float32']['top1'])} %.",
    ]
    for target in config.targets:
        direct = summary[f"direct-{target}bit"]
        lines.append(f"- {target}-bit target, direct training: top-1 {_cell(direct['top1'])} %.")
        for name, row in summary.items():
            if name.endswith(f"-{target}bit") and "gain_top1" in row:
                lines.append(f"- {name}: top-1 {_cell(row['top1'])} %, paired gain over direct "
                             f"{_cell(row['gain_top1'], signed=True)} pp.")
    lines.append(f"- Data: {sources}. Values are mean ± sample standard deviation over seeds; "
                 f"the paper reports {PAPER['top1']:+.2f} pp top-1 for CTMQ over direct binarization.")
    return "\n".join(lines)


def build_section(config, results, summary, run_dir, sources):
    """Build the report section: the paper's gain beside ours, per-target tables and plots."""
    title, _, _ = TASKS[config.dataset]
    tables = {f"{target}-bit target": _method_table(summary, config, target) for target in config.targets}
    plot_paths = [(f"{title}: mean top-1 along each schedule, {target}-bit target",
                   _plot_schedules(results, config, target, run_dir)) for target in config.targets]
    deviations = [
        f"{title} instead of ResNet-18 on ImageNet; pretraining and fine-tuning are far shorter than "
        "the paper's.",
        "Only weights are quantized (first and last layers stay float)." if not config.quantize_activations
        else "Weights and activations are quantized (first and last layers stay float).",
        "A cycle with a float32 accurate model descends from start_bits through every width again; "
        "each step restarts momentum and a cosine learning-rate decay.",
    ]
    if config.epoch_steps is not None:
        deviations.append(f"An epoch is {config.epoch_steps} optimiser steps of batch {config.batch_size}, "
                          "not a full pass over the training set.")
    if config.eval_examples is not None:
        deviations.append(f"Evaluation uses a fixed class-balanced subset of {config.eval_examples:,} test images.")
    if config.other_target_cycles is not None:
        deviations.append(f"Targets after the first run direct training and CTMQ with "
                          f"{', '.join(map(str, config.other_target_cycles))} cycle(s) only.")
    return report_lib.Section(
        title="Cyclic training with multiple quantization steps (Kim et al., arXiv:2206.12794)",
        summary=_summary_text(summary, results, config, title, sources),
        comparison=_comparison(summary, config, title),
        tables=tables,
        plots=plot_paths,
        command=common.command_line(MODULE, config, PRESETS),
        config=config_lib.to_dict(config),
        deviations=deviations,
    )


# --------------------------------------------------------------------------------------
# Entry points


def run(config, run_dir):
    """Run every seed and method and return the report section; writes results.json too."""
    validate(config)
    train_set = data_lib.load_image_dataset(config.dataset, "train", data_dir=config.data_dir)
    test_set = data_lib.load_image_dataset(config.dataset, "test", data_dir=config.data_dir)
    test_subset = test_set.take(config.eval_examples)
    compiled = CompiledSteps(config, train_set.spec)

    identity = {key: value for key, value in config_lib.to_dict(config).items()
                if key not in config_lib.LOCATION_FIELDS + ("preset", "seed", "seeds", "log_every")}
    work = common.experiment_dir(config, EXPERIMENT) / f"{config.dataset}-{config_lib.config_hash(identity, exclude=())}"
    results = {}
    for seed in range(config.seed, config.seed + config.seeds):
        results[seed] = run_seed(config, seed, (train_set, test_subset), compiled, work / f"seed-{seed}")

    summary = summarize(results, config)
    out = Path(run_dir) / EXPERIMENT
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.write_json_atomic(out / "results.json", {
        "seeds": {str(seed): value for seed, value in results.items()},
        "summary": summary,
        "train_source": train_set.source,
        "test_source": test_set.source,
        "test_examples": len(test_subset),
    })
    sources = f"{train_set.source}; {len(test_subset):,} of {len(test_set):,} test images"
    return build_section(config, results, summary, run_dir, sources)


def main(argv=None):
    return common.run_standalone(MODULE, PRESETS, run, argv=argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
