"""Stochasticity wrappers over the gymnax `Environment` API: Noisy TV and sticky actions.

Both wrap an environment whose `step(key, state, action, params)` returns
(obs, state, reward, terminated, truncated, info) with automatic resets and
`info["final_observation"]`, as gymnax 1.0 does, and keep that contract.

- `NoisyTV`: one action turns on a "TV". The observation that follows it is replaced
  by fresh uniform noise, or its rows are shuffled. A curiosity bonus that rewards
  unpredictable observations can draw the agent to that action for good.
- `StickyActions`: with probability p the environment repeats the previously executed
  action instead of the requested one (p = 0.25 in stochastic Atari benchmarks).
"""

from functools import partial

import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.wrappers.purerl import GymnaxWrapper, StickyActionWrapper

NOISY_TV_MODES = ("noise", "shuffle")


class NoisyTV(GymnaxWrapper):
    """Replace the observation after the TV action by noise ("noise") or shuffled rows ("shuffle").

    Args:
      env: the environment to wrap.
      mode: "noise" fills the observation with fresh uniform values in [low, high] of
        its observation space; "shuffle" permutes its first axis (rows) at random.
      tv_action: an existing action that also turns on the TV. When None, a new action
        is appended (index = the inner action count) that runs `noop_action` in the
        inner environment.
      noop_action: the inner action that the appended TV action runs.

    Raises:
      ValueError: an unknown mode, or an action index outside the action space.
    """

    def __init__(self, env, *, mode="noise", tv_action=None, noop_action=0):
        super().__init__(env)
        if mode not in NOISY_TV_MODES:
            raise ValueError(f"noisy TV mode={mode!r} is not valid; choose one of {NOISY_TV_MODES}.")
        inner_actions = env.num_actions
        for name, action in (("tv_action", tv_action), ("noop_action", noop_action)):
            if action is not None and not 0 <= action < inner_actions:
                raise ValueError(f"{name}={action} is outside the inner action range [0, {inner_actions - 1}].")
        self.mode = mode
        self.appends_action = tv_action is None
        self.tv_action = inner_actions if self.appends_action else tv_action
        self.noop_action = noop_action

    @property
    def num_actions(self):
        return self._env.num_actions + int(self.appends_action)

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions)

    def _tv_picture(self, key, obs, params):
        if self.mode == "shuffle":
            return jax.random.permutation(key, obs, axis=0)
        space = self._env.observation_space(params)
        return jax.random.uniform(key, obs.shape, obs.dtype, minval=space.low, maxval=space.high)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key, params=None):
        return self._env.reset(key, params)

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        step_key, tv_key = jax.random.split(key)
        tv_on = action == self.tv_action
        inner_action = jnp.where(tv_on & self.appends_action, self.noop_action, action)
        obs, state, reward, terminated, truncated, info = self._env.step(step_key, state, inner_action, params)

        # The TV shows in the observation that follows the action: the next observation,
        # or the final observation when the episode ended. A reset observation is clean.
        done = jnp.logical_or(terminated, truncated)
        final = info["final_observation"]
        picture = self._tv_picture(tv_key, final, params)
        final = jnp.where(tv_on, picture, final)
        obs = jnp.where(tv_on & ~done, picture, obs)
        return obs, state, reward, terminated, truncated, {**info, "final_observation": final, "tv_on": tv_on}


class StickyActions(StickyActionWrapper):
    """Repeat the previously executed action with probability `p` (default 0.25).

    gymnax's `StickyActionWrapper` does the repeating. This subclass also resets the
    previous action to 0 (the no-op of MinAtar) when an episode ends, so an episode
    never starts by repeating the last action of the one before.
    """

    def __init__(self, env, p=0.25):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"sticky-action probability p={p} is outside [0, 1].")
        super().__init__(env, sticky_action_prob=p)
        self.p = p

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = super().step(key, state, action, params)
        done = jnp.logical_or(terminated, truncated)
        last_action = jnp.where(done, jnp.zeros_like(state.last_action), state.last_action)
        info = {**info, "executed_action": state.last_action}
        return obs, state.replace(last_action=last_action), reward, terminated, truncated, info
