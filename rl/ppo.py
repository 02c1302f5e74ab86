"""PPO with extrinsic and intrinsic value heads, run end to end under one jit.

`make_train(config)` returns `train(key) -> (runner_state, metrics)`: environment
resets, every rollout, the intrinsic rewards, GAE and the minibatch epochs run in one
`lax.scan`, so `jax.jit(jax.vmap(train))(keys)` trains several seeds in one program.
The only host round trip is the optional progress callback, every `log_every` updates.

One iteration:

1. Roll out `num_steps` steps in `num_envs` environments.
2. Merge the observations reached into the running observation statistics, and give
   the intrinsic module the normalised, clipped observations.
3. Divide intrinsic rewards by the running standard deviation of each environment's
   discounted intrinsic return (`rl.normalize.ReturnFilter`).
4. Advantages by GAE per head. The extrinsic head is episodic: it bootstraps from the
   final observation on truncation and not at all on termination. The intrinsic head is
   non-episodic: its return flows across episode ends into the next episode.
   The policy's advantage is ext_coef * A_ext + int_coef * A_int.
5. `update_epochs` passes over shuffled minibatches, each a clipped PPO step of the
   agent and one update step of the intrinsic module on the minibatch's first
   `intrinsic.update_proportion` part, a uniform random subset since the rows are
   shuffled.

Metrics per iteration (arrays [num_updates]): "episode_return" is the mean return of
the episodes that ended during the rollout, NaN when none ended ("episodes" counts
them), so a 0 is always a real return.
"""

import dataclasses
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl import envs, intrinsic as intrinsic_lib, networks, normalize
from rl.gae import gae_advantages

logger = logging.getLogger(__name__)

NOISY_TV_MODES = (None, "noise", "shuffle")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """PPO, its environment and its intrinsic reward."""

    env: str = "MiniGrid-DoorKey-8x8"
    """Environment name, one of `rl.envs.ENVIRONMENTS`."""
    noisy_tv: str | None = None
    """None, or the Noisy TV mode: noise or shuffle."""
    sticky_p: float = 0.0
    """Probability of repeating the previous action (0.25 for sticky actions)."""
    num_envs: int = 16
    """Environments stepped in parallel."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    total_timesteps: int = 5_000_000
    """Environment steps of training, rounded down to whole rollouts."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 8
    """Minibatches per pass; must divide num_envs * num_steps."""
    learning_rate: float = 1e-3
    """Adam learning rate of the agent."""
    anneal_lr: bool = False
    """Decay the agent's learning rate linearly to 0."""
    gamma: float = 0.99
    """Discount of the extrinsic return."""
    gamma_int: float = 0.99
    """Discount of the intrinsic return."""
    gae_lambda: float = 0.95
    """GAE lambda of both heads."""
    clip_eps: float = 0.2
    """PPO ratio and value clipping range."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip of the agent."""
    ext_coef: float = 2.0
    """Weight of the extrinsic advantage."""
    int_coef: float = 1.0
    """Weight of the intrinsic advantage."""
    normalize_advantages: bool = True
    """Standardise the combined advantage per minibatch."""
    obs_clip: float = 5.0
    """Clip of the normalised observations given to the intrinsic module."""
    hidden: int = 64
    """Width of the agent's layers."""
    torso: str = "mlp"
    """Agent torso: mlp or cnn."""
    intrinsic: intrinsic_lib.IntrinsicConfig = intrinsic_lib.IntrinsicConfig()
    """Intrinsic-reward method and sizes."""
    log_every: int = 0
    """Call the progress callback every this many updates; 0 never calls it."""


def batch_size(config):
    return config.num_envs * config.num_steps


def num_updates(config):
    return config.total_timesteps // batch_size(config)


def validate(config):
    """Raise ValueError, naming the value and its valid range, for a config that cannot run."""
    envs.check_name(config.env)
    for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    size = batch_size(config)
    if size % config.num_minibatches:
        divisors = [d for d in range(1, min(size, 64) + 1) if size % d == 0]
        raise ValueError(
            f"num_minibatches={config.num_minibatches} does not divide the batch size "
            f"num_envs * num_steps = {size}; choose a divisor such as {divisors}."
        )
    if config.total_timesteps < size:
        raise ValueError(
            f"total_timesteps={config.total_timesteps} is less than one rollout of "
            f"num_envs * num_steps = {size} steps."
        )
    if config.noisy_tv not in NOISY_TV_MODES:
        raise ValueError(f"noisy_tv={config.noisy_tv!r} is not valid; choose one of {NOISY_TV_MODES}.")
    if not 0.0 <= config.sticky_p <= 1.0:
        raise ValueError(f"sticky_p={config.sticky_p} is outside [0, 1].")
    if config.torso not in networks.TORSOS:
        raise ValueError(f"torso={config.torso!r} is not valid; choose one of {networks.TORSOS}.")
    for name in ("gamma", "gamma_int", "gae_lambda"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} is outside [0, 1].")
    intrinsic_lib.validate(config.intrinsic)


# --------------------------------------------------------------------------------------
# State


class PolicyState(NamedTuple):
    params: Any
    opt_state: Any


class RunnerState(NamedTuple):
    """Everything one iteration carries to the next."""

    policy: PolicyState
    intrinsic: intrinsic_lib.IntrinsicState
    obs_stats: normalize.RunningStats  # statistics of single observations [height, width, channels]
    return_filter: normalize.ReturnFilter
    env_state: Any
    obs: jax.Array  # [num_envs, height, width, channels]


class Rollout(NamedTuple):
    """One rollout, every field [num_steps, num_envs, ...]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value_ext: jax.Array
    value_int: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    next_obs: jax.Array  # the observation each step produced, before any automatic reset
    episode_return: jax.Array  # return of the episode that ended at this step
    episode_ended: jax.Array


class Batch(NamedTuple):
    """Flattened rollout with its targets, every field [batch, ...]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value_ext: jax.Array
    value_int: jax.Array
    advantage: jax.Array
    return_ext: jax.Array
    return_int: jax.Array
    transitions: intrinsic_lib.Transitions
    noise: jax.Array


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of training: config, environment, networks and optimizers."""

    config: PPOConfig
    env: Any
    env_params: Any
    network: networks.ActorCritic
    intrinsic: intrinsic_lib.Intrinsic
    tx: Any
    obs_shape: tuple
    num_actions: int
    tv_action: int | None
    progress: Any


def build(config, progress=None):
    """Validate `config` and build its `Setup`."""
    validate(config)
    env, env_params = envs.make_env(config.env, noisy_tv=config.noisy_tv, sticky_p=config.sticky_p)
    num_actions = env.num_actions
    obs_shape = tuple(env.observation_space(env_params).shape)
    network = networks.ActorCritic(num_actions=num_actions, hidden=config.hidden, torso=config.torso)
    steps = num_updates(config) * config.update_epochs * config.num_minibatches
    learning_rate = (optax.linear_schedule(config.learning_rate, 0.0, steps) if config.anneal_lr
                     else config.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(learning_rate, eps=1e-5))
    tv_action = env._env.tv_action if config.noisy_tv is not None else None
    return Setup(
        config=config, env=env, env_params=env_params, network=network,
        intrinsic=intrinsic_lib.make(config.intrinsic, num_actions), tx=tx, obs_shape=obs_shape,
        num_actions=num_actions, tv_action=tv_action, progress=progress,
    )


def init_runner(setup, key, beta, latent_axis=None):
    """Reset the environments and initialise the networks.

    `beta` and `latent_axis` (a bool; None keeps the config's axis) override TeCLE's
    noise settings and may be traced.
    """
    config = setup.config
    policy_key, intrinsic_key, env_key = jax.random.split(key, 3)
    example = jnp.zeros((1,) + setup.obs_shape, jnp.float32)
    params = setup.network.init(policy_key, example)
    intrinsic_state = setup.intrinsic.init(intrinsic_key, setup.obs_shape)
    if "beta" in intrinsic_state.frozen:
        frozen = {**intrinsic_state.frozen, "beta": jnp.float32(beta)}
        if latent_axis is not None:
            frozen["latent_axis"] = jnp.asarray(latent_axis, jnp.bool_)
        intrinsic_state = intrinsic_state._replace(frozen=frozen)
    reset = jax.vmap(setup.env.reset, in_axes=(0, None))
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), setup.env_params)
    return RunnerState(
        policy=PolicyState(params, setup.tx.init(params)),
        intrinsic=intrinsic_state,
        obs_stats=normalize.init_stats(setup.obs_shape),
        return_filter=normalize.init_return_filter(config.num_envs),
        env_state=env_state,
        obs=obs,
    )


# --------------------------------------------------------------------------------------
# Rollout


def env_step(setup, carry):
    """Act in every environment once; returns the new carry and the step record.

    The carry is (params, env_state, obs, key): the key travels in the carry rather than
    as pre-split scan inputs, because JAX 0.10.2's key-reuse checker reports scanned
    key arrays under vmap as reused.
    """
    params, env_state, obs, key = carry
    key, action_key, env_key = jax.random.split(key, 3)
    logits, value_ext, value_int = setup.network.apply(params, obs)
    action = jax.random.categorical(action_key, logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=1)[:, 0]

    step = jax.vmap(setup.env.step, in_axes=(0, 0, 0, None))
    next_obs, env_state, reward, terminated, truncated, info = step(
        jax.random.split(env_key, setup.config.num_envs), env_state, action, setup.env_params)
    record = Rollout(
        obs=obs, action=action, log_prob=log_prob, value_ext=value_ext, value_int=value_int,
        reward=reward.astype(jnp.float32), terminated=terminated,
        done=jnp.logical_or(terminated, truncated), next_obs=info["final_observation"],
        episode_return=info["returned_episode_returns"], episode_ended=info["returned_episode"],
    )
    return (params, env_state, next_obs, key), record


def collect_rollout(setup, runner, key):
    """Run `num_steps` steps in every environment; returns the runner and the `Rollout`."""
    carry = (runner.policy.params, runner.env_state, runner.obs, key)
    (_, env_state, obs, _), rollout = jax.lax.scan(
        lambda c, _: env_step(setup, c), carry, None, length=setup.config.num_steps)
    return runner._replace(env_state=env_state, obs=obs), rollout


# --------------------------------------------------------------------------------------
# Rewards and advantages


def intrinsic_rewards(setup, runner, rollout, key):
    """Score the rollout with the intrinsic module.

    Returns (runner with updated observation statistics and return filter, normalised
    transitions, noise rows, raw rewards, scaled rewards), all [num_steps, num_envs, ...].
    """
    config = setup.config
    obs_stats = normalize.update_stats(runner.obs_stats, rollout.next_obs)
    transitions = intrinsic_lib.Transitions(
        obs=normalize.normalize(obs_stats, rollout.obs, clip=config.obs_clip),
        action=rollout.action,
        next_obs=normalize.normalize(obs_stats, rollout.next_obs, clip=config.obs_clip),
    )
    raw, noise = setup.intrinsic.reward(runner.intrinsic, transitions, key)
    return_filter, _ = normalize.update_return_filter(runner.return_filter, raw, config.gamma_int)
    scaled = normalize.scale_by_return_std(return_filter, raw)
    runner = runner._replace(obs_stats=obs_stats, return_filter=return_filter)
    return runner, transitions, noise, raw, scaled


def advantages(setup, runner, rollout, intrinsic_reward):
    """Return (combined advantage, extrinsic return, intrinsic return), each [num_steps, num_envs]."""
    config = setup.config
    time, num_envs = rollout.action.shape
    params = runner.policy.params

    # Extrinsic: bootstrap from the observation each step produced, before any reset.
    flat_next = rollout.next_obs.reshape((time * num_envs,) + setup.obs_shape)
    _, next_value_ext, _ = setup.network.apply(params, flat_next)
    advantage_ext, return_ext = gae_advantages(
        rollout.reward, rollout.value_ext, next_value_ext.reshape(time, num_envs),
        rollout.terminated, rollout.done, gamma=config.gamma, lam=config.gae_lambda)

    # Intrinsic: the stream continues across resets, so the next value is that of the
    # next observation the agent sees, and no step ends the sum.
    _, _, last_value_int = setup.network.apply(params, runner.obs)
    next_value_int = jnp.concatenate([rollout.value_int[1:], last_value_int[None]], axis=0)
    never = jnp.zeros_like(rollout.done)
    advantage_int, return_int = gae_advantages(
        intrinsic_reward, rollout.value_int, next_value_int, never, never,
        gamma=config.gamma_int, lam=config.gae_lambda)

    combined = config.ext_coef * advantage_ext + config.int_coef * advantage_int
    return combined, return_ext, return_int


# --------------------------------------------------------------------------------------
# Updates


def clipped_value_loss(value, old_value, target, clip_eps):
    clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum((value - target) ** 2, (clipped - target) ** 2).mean()


def ppo_loss(setup, params, batch):
    """Clipped surrogate loss, clipped value losses of both heads and the entropy bonus."""
    config = setup.config
    logits, value_ext, value_int = setup.network.apply(params, batch.obs)
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, batch.action[:, None], axis=1)[:, 0]
    ratio = jnp.exp(log_prob - batch.log_prob)

    advantage = batch.advantage
    if config.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = -jnp.minimum(ratio * advantage, clipped_ratio * advantage).mean()

    value_loss = clipped_value_loss(value_ext, batch.value_ext, batch.return_ext, config.clip_eps)
    value_loss += clipped_value_loss(value_int, batch.value_int, batch.return_int, config.clip_eps)
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1).mean()
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - jnp.log(ratio)),
        "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > config.clip_eps),
    }
    return loss, metrics


def minibatch_update(setup, carry, batch):
    """One PPO step of the agent and one update step of the intrinsic module."""
    policy, intrinsic_state = carry
    grads, metrics = jax.grad(lambda p: ppo_loss(setup, p, batch), has_aux=True)(policy.params)
    updates, opt_state = setup.tx.update(grads, policy.opt_state, policy.params)
    policy = PolicyState(optax.apply_updates(policy.params, updates), opt_state)
    # The rows are in shuffled order, so the first `rows` are a uniform random subset.
    rows = intrinsic_rows(setup.config, batch.action.shape[0])
    intrinsic_state, intrinsic_metrics = setup.intrinsic.update(
        intrinsic_state, jax.tree.map(lambda x: x[:rows], batch.transitions), batch.noise[:rows])
    return (policy, intrinsic_state), {**metrics, **intrinsic_metrics}


def intrinsic_rows(config, minibatch):
    """Rows of a minibatch the intrinsic module trains on: the proportion, at least one."""
    return max(1, round(config.intrinsic.update_proportion * minibatch))


def update_epoch(setup, carry, batch):
    """Shuffle the batch, split it into minibatches and update on each in turn.

    The carry is (PolicyState, IntrinsicState, key).
    """
    config = setup.config
    policy, intrinsic_state, key = carry
    key, permutation_key = jax.random.split(key)
    size = batch_size(config)
    permutation = jax.random.permutation(permutation_key, size)

    def to_minibatches(x):
        # Explicit sizes, because -1 cannot be inferred for noise rows of width 0.
        shape = (config.num_minibatches, size // config.num_minibatches) + x.shape[1:]
        return jnp.take(x, permutation, axis=0).reshape(shape)

    minibatches = jax.tree.map(to_minibatches, batch)
    (policy, intrinsic_state), metrics = jax.lax.scan(
        lambda c, b: minibatch_update(setup, c, b), (policy, intrinsic_state), minibatches)
    return (policy, intrinsic_state, key), metrics


def flatten_batch(rollout, combined, return_ext, return_int, transitions, noise):
    """Merge the [num_steps, num_envs] axes of everything the update needs."""

    def flat(x):
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    return Batch(
        obs=flat(rollout.obs), action=flat(rollout.action), log_prob=flat(rollout.log_prob),
        value_ext=flat(rollout.value_ext), value_int=flat(rollout.value_int), advantage=flat(combined),
        return_ext=flat(return_ext), return_int=flat(return_int),
        transitions=jax.tree.map(flat, transitions), noise=flat(noise),
    )


# --------------------------------------------------------------------------------------
# Iterations and the training loop


def episode_metrics(rollout):
    """Mean return of the episodes that ended in the rollout (NaN if none) and their count."""
    ended = rollout.episode_ended.astype(jnp.float32)
    count = ended.sum()
    total = jnp.sum(rollout.episode_return * ended)
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)
    return {"episode_return": mean, "episodes": count}


def train_iteration(setup, runner, key):
    """Roll out, score, compute advantages and update; returns (runner, metrics)."""
    config = setup.config
    rollout_key, intrinsic_key, epochs_key = jax.random.split(key, 3)
    runner, rollout = collect_rollout(setup, runner, rollout_key)
    runner, transitions, noise, raw_intrinsic, scaled_intrinsic = intrinsic_rewards(
        setup, runner, rollout, intrinsic_key)
    combined, return_ext, return_int = advantages(setup, runner, rollout, scaled_intrinsic)
    batch = flatten_batch(rollout, combined, return_ext, return_int, transitions, noise)

    carry = (runner.policy, runner.intrinsic, epochs_key)
    (policy, intrinsic_state, _), update_metrics = jax.lax.scan(
        lambda c, _: update_epoch(setup, c, batch), carry, None, length=config.update_epochs)
    runner = runner._replace(policy=policy, intrinsic=intrinsic_state)

    metrics = {name: value.mean() for name, value in update_metrics.items()}
    metrics.update(episode_metrics(rollout))
    metrics["extrinsic_reward"] = rollout.reward.mean()
    metrics["intrinsic_reward"] = raw_intrinsic.mean()
    metrics["intrinsic_reward_scaled"] = scaled_intrinsic.mean()
    if setup.tv_action is not None:
        metrics["tv_fraction"] = jnp.mean(rollout.action == setup.tv_action)
    return runner, metrics


def report_progress(setup, index, metrics):
    """Call the progress callback on the host every `log_every` updates."""
    every = setup.config.log_every
    if setup.progress is None or every <= 0:
        return

    def call(index, metrics):
        setup.progress(int(index), {name: np.asarray(value) for name, value in metrics.items()})

    # `index` comes from the scan's inputs, not the vmapped carry, so the condition stays
    # a real branch under vmap and skipped updates make no host round trip.
    jax.lax.cond((index + 1) % every == 0,
                 lambda: jax.debug.callback(call, index, metrics),
                 lambda: None)


def run_training(setup, key, beta, latent_axis=None):
    """Train from `key`; returns (final RunnerState, metrics [num_updates] per name)."""
    init_key, loop_key = jax.random.split(key)
    runner = init_runner(setup, init_key, beta, latent_axis)
    updates = num_updates(setup.config)

    def body(carry, index):
        runner, key = carry
        key, iteration_key = jax.random.split(key)
        runner, metrics = train_iteration(setup, runner, iteration_key)
        metrics["env_steps"] = (index + 1) * batch_size(setup.config)
        report_progress(setup, index, metrics)
        return (runner, key), metrics

    (runner, _), metrics = jax.lax.scan(body, (runner, loop_key), jnp.arange(updates))
    return runner, metrics


def make_train(config, *, progress=None):
    """Return `train(key) -> (RunnerState, metrics)` for `config`, pure and vmappable.

    Args:
      config: a `PPOConfig`; checked here, so a bad config fails before tracing.
      progress: optional host function (update index, metrics of that update), called
        every `config.log_every` updates.

    Raises:
      ValueError: an unknown environment, a beta outside [-2, 2], a minibatch count that
        does not divide the batch, or another invalid field.
    """
    setup = build(config, progress)

    def train(key):
        return run_training(setup, key, config.intrinsic.beta)

    return train


def make_train_over_beta(config, *, progress=None):
    """Return `train(key, beta)`: `make_train` with TeCLE's beta as a traced argument.

    One compilation then serves a sweep over beta (vmap over both arguments). A traced
    beta is not range-checked, so check each value with `rl.noise.check_beta` first.
    """
    setup = build(config, progress)

    def train(key, beta):
        return run_training(setup, key, beta)

    return train


def make_train_over_noise(config, *, progress=None):
    """Return `train(key, beta, latent_axis)`: TeCLE's beta and noise axis both traced.

    `latent_axis` is a bool scalar: True correlates the noise along the latent axis,
    False along time. One compilation serves a sweep over both (vmap over the
    arguments); check each beta with `rl.noise.check_beta` first.
    """
    setup = build(config, progress)

    def train(key, beta, latent_axis):
        return run_training(setup, key, beta, latent_axis)

    return train
