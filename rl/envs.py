"""Environments by name, all behind the gymnax `Environment` API with float32 observations.

- MiniGrid through xminigrid (0.9): the agent's 7x7 egocentric view, each cell's tile
  and colour one-hot encoded ([7, 7, 25] float32). xminigrid has six actions; a seventh,
  "done", does nothing but spend a step, as in Farama MiniGrid, so the action set is
  MiniGrid's. Reward on reaching the goal: 1 - 0.9 * steps / max_steps, as in MiniGrid.
  xminigrid has no KeyCorridor or MultiRoom, so those names are not registered.
- MinAtar from gymnax (Breakout, SpaceInvaders, Freeway, Seaquest, Asterix): binary
  [10, 10, channels] observations cast to float32, minimal action sets whose action 0 is
  the no-op.

`make_env(name, noisy_tv=..., sticky_p=...)` adds the stochasticity wrappers and
gymnax's `LogWrapper`, whose info reports the return of every finished episode.
"""

from functools import partial

import gymnax
import jax
import jax.numpy as jnp
import xminigrid
from flax import struct
from gymnax.environments import environment, spaces
from gymnax.wrappers.purerl import GymnaxWrapper, LogWrapper
from xminigrid.core.constants import NUM_COLORS, NUM_TILES

from rl import wrappers

MINIGRID = (
    "MiniGrid-DoorKey-5x5",
    "MiniGrid-DoorKey-6x6",
    "MiniGrid-DoorKey-8x8",
    "MiniGrid-DoorKey-16x16",
    "MiniGrid-Empty-8x8",
    "MiniGrid-Empty-16x16",
    "MiniGrid-Unlock",
)
MINATAR = (
    "Breakout-MinAtar",
    "SpaceInvaders-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "Asterix-MinAtar",
)
ENVIRONMENTS = MINIGRID + MINATAR

# The no-op "done" action. The TeCLE authors' MiniGrid Noisy TV also turns on with it.
MINIGRID_DONE_ACTION = 6
MINATAR_NOOP_ACTION = 0


@struct.dataclass
class MiniGridState:
    timestep: object  # xminigrid TimeStep
    time: jax.Array  # [] int32, steps taken in this episode


@struct.dataclass
class MiniGridParams:
    max_steps_in_episode: int


class MiniGrid(environment.Environment):
    """An xminigrid environment behind the gymnax API, with one-hot observations and "done".

    Args:
      name: an xminigrid MiniGrid name such as "MiniGrid-DoorKey-8x8".
    """

    def __init__(self, name):
        super().__init__()
        self._env, self._params = xminigrid.make(name)
        self._name = name
        view = self._params.view_size
        self.obs_shape = (view, view, NUM_TILES + NUM_COLORS)

    @property
    def name(self):
        return self._name

    @property
    def default_params(self):
        return MiniGridParams(max_steps_in_episode=int(self._params.max_steps))

    @property
    def num_actions(self):
        return self._env.num_actions(self._params) + 1

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params=None):
        return spaces.Box(0.0, 1.0, self.obs_shape, jnp.float32)

    def encode(self, observation):
        """One-hot encode an xminigrid view [H, W, 2] (tile, colour) as float32 [H, W, 25]."""
        tiles = jax.nn.one_hot(observation[..., 0], NUM_TILES, dtype=jnp.float32)
        colours = jax.nn.one_hot(observation[..., 1], NUM_COLORS, dtype=jnp.float32)
        return jnp.concatenate([tiles, colours], axis=-1)

    def reset_env(self, key, params):
        timestep = self._env.reset(self._params, key)
        # The state keeps xminigrid's generator key, which only xminigrid's own reset
        # wrappers read. Raw key bits can be selected by gymnax's automatic reset, and
        # a typed key would count as reused there.
        timestep = timestep.replace(state=timestep.state.replace(key=jax.random.key_data(timestep.state.key)))
        return self.encode(timestep.observation), MiniGridState(timestep=timestep, time=jnp.int32(0))

    def step_env(self, key, state, action, params):
        del key  # MiniGrid transitions are deterministic
        done_action = action == MINIGRID_DONE_ACTION
        moved = self._env.step(self._params, state.timestep, jnp.minimum(action, MINIGRID_DONE_ACTION - 1))
        # "done" keeps the grid and the agent and only spends a step.
        waited = state.timestep.replace(
            state=state.timestep.state.replace(step_num=state.timestep.state.step_num + 1),
            reward=jnp.zeros_like(moved.reward),
            discount=jnp.ones_like(moved.discount),
        )
        timestep = jax.tree.map(lambda a, b: jax.lax.select(done_action, a, b), waited, moved)
        terminated = jnp.logical_and(~done_action, moved.discount == 0.0)
        reward = jnp.where(done_action, 0.0, moved.reward).astype(jnp.float32)
        state = MiniGridState(timestep=timestep, time=state.time + 1)
        return self.encode(timestep.observation), state, reward, terminated, {}

    def is_terminated(self, state, params):
        return state.timestep.discount == 0.0


class FloatObservation(GymnaxWrapper):
    """Cast observations, including info["final_observation"], to float32."""

    def observation_space(self, params=None):
        space = self._env.observation_space(params)
        return spaces.Box(0.0, 1.0, space.shape, jnp.float32)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return obs.astype(jnp.float32), state

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = {**info, "final_observation": info["final_observation"].astype(jnp.float32)}
        return obs.astype(jnp.float32), state, reward.astype(jnp.float32), terminated, truncated, info


def check_name(name):
    """Raise ValueError naming the valid environments unless `name` is registered."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; valid environments are {ENVIRONMENTS}.")


def make_base(name):
    """Return (env, params) of environment `name` without wrappers, float32 observations."""
    check_name(name)
    if name in MINIGRID:
        env = MiniGrid(name)
        return env, env.default_params
    env, params = gymnax.make(name)
    return FloatObservation(env), params


def make_env(name, *, noisy_tv=None, sticky_p=0.0):
    """Return (env, params) of environment `name` with the requested stochasticity.

    Args:
      name: one of `ENVIRONMENTS`.
      noisy_tv: None, or a `NoisyTV` mode ("noise" or "shuffle"). On MiniGrid the "done"
        action turns the TV on; on MinAtar an extra action that runs the no-op does.
      sticky_p: probability of repeating the previous action; 0 leaves actions alone.

    The outermost wrapper is gymnax's `LogWrapper`: info["returned_episode"] marks the
    steps that end an episode and info["returned_episode_returns"] contains its return.
    """
    env, params = make_base(name)
    if sticky_p:
        env = wrappers.StickyActions(env, p=sticky_p)
    if noisy_tv is not None:
        if name in MINIGRID:
            env = wrappers.NoisyTV(env, mode=noisy_tv, tv_action=MINIGRID_DONE_ACTION)
        else:
            env = wrappers.NoisyTV(env, mode=noisy_tv, noop_action=MINATAR_NOOP_ACTION)
    return LogWrapper(env), params
