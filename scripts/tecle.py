"""TeCLE against plain PPO, RND and ICM, with and without Noisy TV and sticky actions.

Every method trains a PPO agent with two value heads (`rl.ppo`) on each environment in
three settings: plain, Noisy TV (one action fills the next observation with uniform
noise) and sticky actions (p = 0.25). All seeds of one (method, environment, setting)
train in one vmapped program; TeCLE's noise exponents beta and its noise axis are
vmapped too, so one compilation covers every TeCLE variant and seed. Every method uses
the same seed keys.

TeCLE runs with its noise correlated along time (the method as named, labelled
"tecle β=...") and, for `latent_axis_betas`, along the latent axis as the authors'
public code draws it ("tecle-latent β=..."); the report compares the two at each beta.

Reported per (method, environment, setting): the learning curve of the extrinsic
episode return (mean over seeds with a 95% Student-t confidence band), the final return
(the mean over the last tenth of training), and under Noisy TV the fraction of steps
that chose the TV action.

The published claims: S. Oh, W. Kim and H. Kim, "A Temporally Correlated Latent
Exploration for Reinforcement Learning", arXiv:2412.04775 (2024): TeCLE is robust to
Noisy TV and to stochastic transitions on MiniGrid and sticky-action Atari, where RND
and ICM are not, and the noise exponent beta that works best depends on the
environment.

Deviations from the paper:
- MinAtar games (gymnax) stand in for Atari, and MiniGrid comes from xminigrid.
- The `small` preset trains far shorter than the paper (see PRESETS), with networks
  narrower than the authors', an MLP agent on MinAtar, and intrinsic modules that
  train on a random quarter of each minibatch, so that it runs on a 2-core CPU.
- The `paper` preset's step counts are our choice, not checked against the paper.
- See `rl.intrinsic` for how our TeCLE differs from the authors' code, and
  `rl.ppo` for the PPO details.

Run: `python -m scripts.tecle --preset small` (see `--help` for every field).
"""

import dataclasses
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from harness import checkpoint as checkpoint_lib
from harness import config as config_lib
from harness import mesh as mesh_lib
from harness import plots
from harness import report as report_lib
from rl import envs as envs_lib
from rl import intrinsic as intrinsic_lib
from rl import networks
from rl import ppo as ppo_lib
from rl.noise import check_beta
from scripts import common

logger = logging.getLogger(__name__)
MODULE = "scripts.tecle"
EXPERIMENT = "tecle"
METHODS = ("ppo", "rnd", "icm", "tecle")
# Setting name -> the PPOConfig fields that make it.
SETTINGS = {
    "plain": {},
    "noisy_tv": {"noisy_tv": "noise"},
    "sticky": {"sticky_p": 0.25},
}
FINAL_FRACTION = 0.1  # the final return averages the last tenth of the updates


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The TeCLE experiment."""

    preset: str = "small"
    """Preset: smoke, small or paper."""
    seed: int = 0
    """Seed of the first run; the seeds' keys are split from it."""
    seeds: int = 5
    """Seeds per (method, environment, setting), vmapped in one program."""
    data_dir: str | None = None
    """Unused: the environments are simulated. Present so the main job can pass it."""
    workdir: str = "results/work"
    """Folder for cached results (reused when the command is rerun)."""
    results_dir: str = "results"
    """Folder under which each run writes a new <timestamp>-<preset> report folder."""
    envs: tuple[str, ...] = ("MiniGrid-DoorKey-8x8", "Breakout-MinAtar", "SpaceInvaders-MinAtar")
    """Environments, from rl.envs.ENVIRONMENTS."""
    settings: tuple[str, ...] = tuple(SETTINGS)
    """Settings: plain, noisy_tv, sticky."""
    methods: tuple[str, ...] = METHODS
    """Methods: ppo (no intrinsic reward), rnd, icm, tecle."""
    betas: tuple[float, ...] = (-1.0, 0.0, 0.5, 1.0, 2.0)
    """TeCLE noise exponents, each in [-2, 2], with the noise correlated along time."""
    latent_axis_betas: tuple[float, ...] = (-1.0, 0.5, 1.0, 2.0)
    """TeCLE exponents also run with the noise correlated along the latent axis (white noise, beta 0, is the same on both axes)."""
    minatar_torso: str = "cnn"
    """Agent torso on MinAtar: cnn or mlp (MiniGrid always uses mlp)."""
    minigrid_timesteps: int = 5_000_000
    """Environment steps per MiniGrid run."""
    minatar_timesteps: int = 10_000_000
    """Environment steps per MinAtar run."""
    ppo: ppo_lib.PPOConfig = ppo_lib.PPOConfig()
    """PPO and intrinsic-module settings; env, noisy_tv, sticky_p, total_timesteps, torso and the method are set per run."""
    curve_points: int = 20
    """Points of each learning curve (windows of updates)."""


_TINY_INTRINSIC = intrinsic_lib.IntrinsicConfig(
    channels=8, conv_layers=1, hidden=32, features=16, latent=8, condition=4,
    encoder_channels=(8,), encoder_hidden=(32,), head_hidden=16, decoder_hidden=(32,),
    update_proportion=0.25,
)

PRESETS = {
    # One compilation (TeCLE, two betas, two seeds) on Empty-8x8, where a random policy
    # finishes some episodes; seconds of training.
    "smoke": Config(
        preset="smoke", seeds=2, envs=("MiniGrid-Empty-8x8",), settings=("noisy_tv",),
        methods=("tecle",), betas=(-1.0, 1.0), latent_axis_betas=(1.0,), minigrid_timesteps=8 * 32 * 8,
        ppo=ppo_lib.PPOConfig(num_envs=8, num_steps=32, num_minibatches=2, update_epochs=1, hidden=16,
                          intrinsic=dataclasses.replace(_TINY_INTRINSIC, latent=4)),
        curve_points=4,
    ),
    # 30 updates per run; 20.7 minutes on an idle 2-core CPU, compilation included. The
    # MLP agent on MinAtar and the quarter of each minibatch for the intrinsic modules
    # keep it under 30 minutes, because the CNN agent alone cost 30 times the MLP there.
    "small": Config(
        preset="small", seeds=5, envs=("MiniGrid-DoorKey-5x5", "Breakout-MinAtar", "SpaceInvaders-MinAtar"),
        minigrid_timesteps=16 * 64 * 30, minatar_timesteps=16 * 64 * 30, minatar_torso="mlp",
        ppo=ppo_lib.PPOConfig(num_envs=16, num_steps=64, num_minibatches=4, update_epochs=2, hidden=64,
                              learning_rate=1e-3, intrinsic=_TINY_INTRINSIC),
        curve_points=10,
    ),
    "paper": Config(preset="paper"),
}


def env_families(config):
    """Return (whether any environment is MiniGrid, whether any is MinAtar)."""
    minigrid = any(env in envs_lib.MINIGRID for env in config.envs)
    minatar = any(env not in envs_lib.MINIGRID for env in config.envs)
    return minigrid, minatar


def validate(config):
    """Raise ValueError, naming the value and the valid choices, for a config that cannot run."""
    for field, choices in (("envs", envs_lib.ENVIRONMENTS), ("settings", tuple(SETTINGS)), ("methods", METHODS)):
        if not getattr(config, field):
            raise ValueError(f"{field} is empty; give at least one of {choices}.")
    rollout = config.ppo.num_envs * config.ppo.num_steps
    minigrid, minatar = env_families(config)
    for field, used in (("minigrid_timesteps", minigrid), ("minatar_timesteps", minatar)):
        if used and getattr(config, field) < rollout:
            raise ValueError(
                f"{field}={getattr(config, field)} is less than one rollout of --ppo.num-envs x "
                f"--ppo.num-steps = {rollout} environment steps; give at least {rollout}.")
    for name in config.envs:
        envs_lib.check_name(name)
    for setting in config.settings:
        if setting not in SETTINGS:
            raise ValueError(f"setting {setting!r} is not valid; choose from {tuple(SETTINGS)}.")
    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not valid; choose from {METHODS}.")
    for beta in config.betas + config.latent_axis_betas:
        check_beta(beta)
    if config.minatar_torso not in networks.TORSOS:
        raise ValueError(f"minatar_torso={config.minatar_torso!r} is not valid; choose one of {networks.TORSOS}.")
    if "tecle" in config.methods and not config.betas:
        raise ValueError("betas is empty; give at least one TeCLE noise exponent.")
    if config.seeds < 1:
        raise ValueError(f"seeds={config.seeds} must be at least 1.")
    if config.curve_points < 1:
        raise ValueError(f"curve_points={config.curve_points} must be at least 1.")
    for env in config.envs:
        for setting in config.settings:
            for method in config.methods:
                ppo_lib.validate(run_config(config, method, env, setting))


def run_config(config, method, env, setting):
    """Return the PPOConfig of one (method, environment, setting)."""
    timesteps = config.minigrid_timesteps if env in envs_lib.MINIGRID else config.minatar_timesteps
    intrinsic = dataclasses.replace(config.ppo.intrinsic, method="none" if method == "ppo" else method)
    return dataclasses.replace(
        config.ppo, env=env, total_timesteps=timesteps, intrinsic=intrinsic,
        torso="mlp" if env in envs_lib.MINIGRID else config.minatar_torso,
        int_coef=0.0 if method == "ppo" else config.ppo.int_coef,
        **{"noisy_tv": None, "sticky_p": 0.0, **SETTINGS[setting]},
    )


def tecle_variants(config):
    """(label, beta, latent_axis) of every TeCLE run: the time axis first, then the latent axis."""
    return ([(f"tecle β={beta:g}", beta, False) for beta in config.betas]
            + [(f"tecle-latent β={beta:g}", beta, True) for beta in config.latent_axis_betas])


def method_labels(config, method):
    """Curve names of a method: one per TeCLE variant (beta and noise axis)."""
    if method == "tecle":
        return [label for label, _, _ in tecle_variants(config)]
    return [method]


# --------------------------------------------------------------------------------------
# Training, cached per (method, environment, setting)


def train_runs(config, method, env, setting):
    """Train every seed (and beta) of one triple; return metrics arrays [labels, seeds, updates]."""
    run = run_config(config, method, env, setting)
    keys = jax.random.split(jax.random.key(config.seed), config.seeds)
    # Data parallelism over seeds: seeds never interact, so keys split over the mesh
    # split the vmapped program the same way, with no collectives. A seed count that is
    # not a multiple of the device count cannot be split evenly over the mesh. Such keys
    # are replicated, so every device runs every seed: no faster than one device, but
    # the same result on any number of devices.
    mesh = mesh_lib.data_mesh()
    if config.seeds % mesh.devices.size == 0:
        keys = mesh_lib.shard_batch(mesh, keys)
    else:
        keys = mesh_lib.replicate(mesh, keys)
        if mesh.devices.size > 1:
            logger.info("%d seeds do not split evenly over %d devices, so every device trains every seed; "
                        "a seed count that is a multiple of %d splits them", config.seeds, mesh.devices.size,
                        mesh.devices.size)
    started = time.perf_counter()
    if method == "tecle":
        _, betas, latent_axes = zip(*tecle_variants(config))
        train = ppo_lib.make_train_over_noise(run)
        over_seeds = jax.vmap(train, in_axes=(0, None, None))
        program = jax.jit(jax.vmap(over_seeds, in_axes=(None, 0, 0)))
        _, metrics = program(keys, jnp.asarray(betas, jnp.float32), jnp.asarray(latent_axes, jnp.bool_))
    else:
        _, metrics = jax.jit(jax.vmap(ppo_lib.make_train(run)))(keys)
        metrics = jax.tree.map(lambda x: x[None], metrics)
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - started
    steps = ppo_lib.num_updates(run) * ppo_lib.batch_size(run) * config.seeds * len(method_labels(config, method))
    logger.info("%s on %s (%s): %d environment steps in %.1f s, compilation included",
                method, env, setting, steps, seconds)
    check_finite_losses(metrics, method_labels(config, method), f"{method} on {env} ({setting})")
    kept = ("episode_return", "episodes", "env_steps", "intrinsic_reward", "tv_fraction")
    return {name: np.asarray(metrics[name]) for name in kept if name in metrics}, seconds


LOSSES = ("policy_loss", "value_loss", "rnd_loss", "icm_inverse_loss", "icm_forward_loss",
          "tecle_inverse_loss", "tecle_reconstruction_loss", "tecle_kl")


def check_finite_losses(metrics, labels, name):
    """Raise FloatingPointError naming the first update whose loss is NaN or infinite.

    Args:
      metrics: arrays [labels, seeds, updates] per metric name, as `train_runs` gets them.
      labels: the curve name of each row of the first axis.
      name: the triple, for the message.

    A triple trains as one compiled program, so the check runs after it, before anything
    is cached: a diverged triple is never saved, and the triples cached before it stay.
    """
    for loss in LOSSES:
        if loss not in metrics:
            continue
        values = np.asarray(metrics[loss])
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            label, seed, update = bad[np.argmin(bad[:, 2])]
            raise FloatingPointError(
                f"{name}: {loss} became {values[label, seed, update]} at update {update + 1} "
                f"({labels[label]}, seed {seed}). Nothing was cached for this run; lower the learning "
                "rates (--ppo.learning-rate, --ppo.intrinsic.learning-rate).")


def cached_runs(config, method, env, setting, work):
    """Load the triple's metrics from `work`, or train and save them there."""
    path = work / f"{method}-{env}-{setting}.npz"
    if path.is_file():
        with np.load(path) as saved:
            arrays = dict(saved)
        return arrays, float(arrays.pop("seconds"))
    arrays, seconds = train_runs(config, method, env, setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez appends ".npz" to a name without it, so the temporary name keeps the suffix.
    temporary = path.with_name(path.stem + ".tmp.npz")
    np.savez(temporary, seconds=seconds, **arrays)
    os.replace(temporary, path)
    return arrays, seconds


def work_folder(config):
    """Cache folder keyed by every field that changes results."""
    identity = {key: value for key, value in config_lib.to_dict(config).items()
                if key not in config_lib.LOCATION_FIELDS + ("preset", "curve_points")}
    return common.experiment_dir(config, EXPERIMENT) / config_lib.config_hash(identity, exclude=())


# --------------------------------------------------------------------------------------
# Statistics


def window_returns(returns, counts, windows):
    """Count-weighted mean return of the episodes finished in each window of updates.

    Args:
      returns: [seeds, updates] mean return per update, NaN where no episode ended.
      counts: [seeds, updates] episodes that ended in each update.
      windows: number of equal windows (the last takes the remainder).

    Returns:
      [seeds, windows] float64, NaN for a window in which a seed finished no episode.
    """
    updates = returns.shape[-1]
    edges = np.linspace(0, updates, min(windows, updates) + 1).round().astype(int)
    weighted = np.where(counts > 0, np.nan_to_num(returns) * counts, 0.0)
    out = []
    for start, stop in zip(edges[:-1], edges[1:]):
        total = counts[:, start:stop].sum(axis=1)
        mean = weighted[:, start:stop].sum(axis=1) / np.maximum(total, 1)
        out.append(np.where(total > 0, mean, np.nan))
    return np.stack(out, axis=1), edges


def mean_confidence(values, level=0.95):
    """Mean and half-width of the Student-t confidence interval over axis 0, ignoring NaN.

    Returns (mean, half_width) of the remaining axes; the half-width is NaN with fewer
    than two finite values.
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), np.nan)
        spread = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / np.maximum(count - 1, 1))
        quantile = stats.t.ppf(0.5 + level / 2, np.maximum(count - 1, 1))
        half = np.where(count > 1, quantile * spread / np.sqrt(np.maximum(count, 1)), np.nan)
    return mean, half


def summarize_run(config, method, arrays):
    """Curves and final values of each label of one triple."""
    env_steps = arrays["env_steps"].reshape(-1, arrays["env_steps"].shape[-1])[0]
    updates = env_steps.shape[0]
    last = max(1, int(round(updates * FINAL_FRACTION)))
    summary = {}
    for index, label in enumerate(method_labels(config, method)):
        returns, counts = arrays["episode_return"][index], arrays["episodes"][index]
        windows, edges = window_returns(returns, counts, config.curve_points)
        mean, half = mean_confidence(windows)
        final_per_seed, _ = window_returns(returns[:, -last:], counts[:, -last:], 1)
        final_mean, final_half = mean_confidence(final_per_seed[:, 0])
        row = {
            "curve_steps": env_steps[edges[1:] - 1].tolist(),
            "curve_mean": mean.tolist(),
            "curve_half_width": half.tolist(),
            "final": [float(final_mean), float(final_half)],
            "final_per_seed": final_per_seed[:, 0].tolist(),
        }
        if "tv_fraction" in arrays:
            row["tv_fraction"] = float(np.mean(arrays["tv_fraction"][index][:, -last:]))
        summary[label] = row
    return summary


# --------------------------------------------------------------------------------------
# Report


def _cell(pair):
    mean, half = pair
    if not np.isfinite(mean):
        return "no episode"
    return f"{mean:.3f}" if not np.isfinite(half) else f"{mean:.3f} ± {half:.3f}"


def _final_table(config, summary, env):
    headers = ["method"] + [f"{setting} return" for setting in config.settings]
    if "noisy_tv" in config.settings:
        headers.append("TV actions (noisy_tv)")
    rows = []
    for method in config.methods:
        for label in method_labels(config, method):
            row = [label] + [_cell(summary[env][setting][label]["final"]) for setting in config.settings]
            if "noisy_tv" in config.settings:
                row.append(f"{summary[env]['noisy_tv'][label]['tv_fraction']:.1%}")
            rows.append(row)
    return report_lib.markdown_table(headers, rows)


def curve_styles(config):
    """Colour and line style per label: one colour per beta, dashed for the latent axis."""
    styles = {method: (f"C{index}", "-") for index, method in enumerate(("ppo", "rnd", "icm"))}
    betas = sorted(set(config.betas) | set(config.latent_axis_betas))
    for label, beta, latent_axis in tecle_variants(config):
        styles[label] = (f"C{3 + betas.index(beta) % 7}", "--" if latent_axis else "-")
    return styles


def _plot(config, summary, env, setting, run_dir):
    curves = {}
    for label, row in summary[env][setting].items():
        mean = np.asarray(row["curve_mean"])
        half = np.nan_to_num(np.asarray(row["curve_half_width"]))
        curves[label] = (row["curve_steps"], mean, mean - half, mean + half)
    path = run_dir / EXPERIMENT / f"{env}-{setting}.png"
    plots.band_plot(path, curves, xlabel="environment steps", ylabel="episode return",
                    title=f"{env}, {setting}: mean and 95% CI over {config.seeds} seeds",
                    styles=curve_styles(config))
    return str(path.relative_to(run_dir))


def _best(summary, env, setting, labels):
    finals = {label: summary[env][setting][label]["final"] for label in labels}
    finite = {label: pair for label, pair in finals.items() if np.isfinite(pair[0])}
    if not finite:
        return None, (np.nan, np.nan)
    label = max(finite, key=lambda name: finite[name][0])
    return label, finite[label]


def _separated(first, second):
    """Return whether the 95% interval of `first` lies wholly above that of `second`."""
    (a, a_half), (b, b_half) = first, second
    return bool(np.isfinite(a_half) and np.isfinite(b_half) and a - a_half > b + b_half)


def _claims(config, summary):
    """Return (comparison table, paragraph) on robustness and on the best beta.

    TeCLE enters with its noise along time, the method as named; `_axis_comparison`
    covers the latent-axis variant.
    """
    tecle_labels = [f"tecle β={beta:g}" for beta in config.betas] if "tecle" in config.methods else []
    baselines = [m for m in ("rnd", "icm", "ppo") if m in config.methods]
    rows, sentences = [], []
    for setting in (s for s in ("noisy_tv", "sticky") if s in config.settings):
        measured = []
        for env in config.envs:
            best_label, best = _best(summary, env, setting, tecle_labels)
            if best_label is None:
                measured.append(f"{env}: no TeCLE episode finished")
                continue
            parts = [f"{env}: best {best_label} {_cell(best)}"]
            for baseline in baselines:
                other = summary[env][setting][baseline]["final"]
                verdict = "above" if _separated(best, other) else (
                    "below" if _separated(other, best) else "not separated from")
                parts.append(f"{verdict} {baseline} {_cell(other)}")
                if baseline in ("rnd", "icm"):
                    sentences.append(f"{env}, {setting}: {best_label} is {verdict} {baseline}.")
            measured.append(", ".join(parts))
        claim = ("TeCLE beats RND and ICM under Noisy TV" if setting == "noisy_tv"
                 else "TeCLE beats RND and ICM under sticky actions")
        rows.append([claim, "yes (MiniGrid, Atari; qualitative, from the abstract)", "; ".join(measured)])
    best_betas = []
    for env in config.envs:
        for setting in config.settings:
            label, _ = _best(summary, env, setting, tecle_labels)
            best_betas.append(f"{env} {setting}: {label or 'none'}")
    if tecle_labels:
        rows.append(["the best beta depends on the environment", "yes", "; ".join(best_betas)])
    table = report_lib.markdown_table(["claim", "published", "measured here (final return, 95% CI)"], rows)

    if not sentences:
        paragraph = ("Do our numbers support the claims? This run cannot say: the claims compare TeCLE "
                     "with RND and ICM under Noisy TV or sticky actions, and no such pair of runs was made.")
        return table, paragraph
    separated = [s for s in sentences if " above " in s]
    paragraph = (
        f"Do our numbers support the claims? Out of {len(sentences)} comparisons of the best TeCLE "
        f"beta against RND or ICM under Noisy TV or sticky actions, {len(separated)} put TeCLE above "
        "with non-overlapping 95% intervals. Picking the best of several betas after the fact favours "
        "TeCLE, so a comparison that is not separated is no evidence for the claim. "
        f"At this preset ({config.preset}) the runs are short, and a method that finishes few "
        "episodes gives wide intervals. "
        + " ".join(sentences)
    )
    return table, paragraph


def _axis_comparison(config, summary):
    """Return (table, sentence) comparing TeCLE's noise along time and along the latent axis.

    One row per (environment, setting, beta) that ran on both axes.
    """
    if "tecle" not in config.methods:
        return None, ""
    shared = [beta for beta in config.latent_axis_betas if beta in config.betas]
    rows, verdicts = [], []
    for env in config.envs:
        for setting in config.settings:
            for beta in shared:
                along_time = summary[env][setting][f"tecle β={beta:g}"]["final"]
                along_latent = summary[env][setting][f"tecle-latent β={beta:g}"]["final"]
                verdict = ("time above" if _separated(along_time, along_latent) else
                           "latent above" if _separated(along_latent, along_time) else "not separated")
                verdicts.append(verdict)
                rows.append([env, setting, f"{beta:g}", _cell(along_time), _cell(along_latent), verdict])
    if not rows:
        return None, ""
    table = report_lib.markdown_table(
        ["environment", "setting", "beta", "noise along time", "noise along latent", "95% intervals"], rows)
    sentence = (
        f"Noise along time against along the latent axis, over {len(rows)} (environment, setting, beta) "
        f"cells: time above in {verdicts.count('time above')}, latent above in "
        f"{verdicts.count('latent above')}, not separated in {verdicts.count('not separated')}."
    )
    return table, sentence


def build_section(config, summary, timings, run_dir):
    """Build the report section: claims beside our numbers, tables per environment, plots."""
    comparison, paragraph = _claims(config, summary)
    axis_table, axis_sentence = _axis_comparison(config, summary)
    tables = {f"{env}: final return (mean ± 95% CI over {config.seeds} seeds)": _final_table(config, summary, env)
              for env in config.envs}
    if axis_table is not None:
        tables["TeCLE noise along time against along the latent axis (final return, mean ± 95% CI)"] = axis_table
    plot_paths = [(f"{env}, {setting}: episode return", _plot(config, summary, env, setting, run_dir))
                  for env in config.envs for setting in config.settings]
    total_steps = sum(t["env_steps"] for t in timings.values())
    minigrid, minatar = env_families(config)
    per_run = []
    if minigrid:
        per_run.append(f"{config.minigrid_timesteps:,} environment steps per MiniGrid run")
    if minatar:
        per_run.append(f"{config.minatar_timesteps:,} environment steps per MinAtar run")
    steps_per_run = " and ".join(per_run)
    tecle_betas = ""
    if "tecle" in config.methods:
        tecle_betas = (
            f"; TeCLE with beta in {{{', '.join(f'{b:g}' for b in config.betas)}}} and noise correlated along "
            f"time, and with beta in {{{', '.join(f'{b:g}' for b in config.latent_axis_betas)}}} along the "
            "latent axis")
    text = "\n".join([
        f"PPO with {', '.join(config.methods)} on {', '.join(config.envs)}, each "
        f"{', '.join(config.settings)}, {config.seeds} seeds vmapped per program{tecle_betas}. "
        f"{steps_per_run}; {total_steps:,} steps in all, "
        f"{sum(t['seconds'] for t in timings.values()):.0f} s of training and compilation "
        "(cached triples count the time of their first run).",
        "",
        "The final return is the mean return of the episodes that ended in the last tenth of the "
        "updates; a seed that finished none is left out. TV actions is the fraction of steps that "
        "chose the TV action over that tenth.",
        "",
        paragraph,
        "",
        axis_sentence,
    ])
    deviations = [
        "MinAtar games (gymnax) stand in for Atari; MiniGrid comes from xminigrid, whose DoorKey "
        "matches MiniGrid's layout and reward.",
        f"Networks: agent width {config.ppo.hidden}"
        f"{f', {config.minatar_torso} torso on MinAtar' if minatar else ''}; intrinsic "
        f"modules with {config.ppo.intrinsic.channels} channels, {config.ppo.intrinsic.conv_layers} "
        f"convolution(s), latent {config.ppo.intrinsic.latent}.",
        f"The intrinsic modules train on a random {config.ppo.intrinsic.update_proportion:.0%} of each PPO "
        "minibatch (the rows of a shuffled minibatch, so a uniform subset).",
        "TeCLE's reward and loss follow rl.intrinsic, which lists how they differ from the authors' code.",
        "The paper preset's step counts are our choice, not checked against the paper.",
    ]
    return report_lib.Section(
        title="TeCLE: temporally correlated latent exploration (Oh et al., arXiv:2412.04775)",
        summary=text, comparison=comparison, tables=tables, plots=plot_paths,
        command=common.command_line(MODULE, config, PRESETS), config=config_lib.to_dict(config),
        deviations=deviations,
    )


# --------------------------------------------------------------------------------------
# Entry points


def run(config, run_dir):
    """Train or load every (method, environment, setting) and return the report section."""
    validate(config)
    work = work_folder(config)
    summary, timings = {}, {}
    for env in config.envs:
        for setting in config.settings:
            for method in config.methods:
                arrays, seconds = cached_runs(config, method, env, setting, work)
                summary.setdefault(env, {}).setdefault(setting, {}).update(summarize_run(config, method, arrays))
                timings[f"{method}-{env}-{setting}"] = {
                    "seconds": seconds, "env_steps": int(arrays["env_steps"].reshape(-1)[-1])
                    * config.seeds * len(method_labels(config, method))}

    out = Path(run_dir) / EXPERIMENT
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.write_json_atomic(out / "results.json", {"summary": summary, "timings": timings})
    return build_section(config, summary, timings, Path(run_dir))


def main(argv=None):
    return common.run_standalone(MODULE, PRESETS, run, argv=argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
