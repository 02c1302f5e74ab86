"""Generalised advantage estimation with termination and truncation kept apart.

Each step t of a rollout carries its reward r_t, the value v_t of its observation, and
the value of the observation that followed it, next_v_t. After a truncation (time limit)
next_v_t is the value of the episode's final observation, before the automatic reset,
so the return is bootstrapped from where the episode was cut. After a termination there
is nothing to bootstrap from:

    delta_t = r_t + gamma * (1 - terminated_t) * next_v_t - v_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},    A_T = 0

with done_t = terminated_t or truncated_t, so the sum never crosses into the next
episode. A non-episodic stream (the intrinsic return) passes all-false flags and the
value of the next observation of the stream.
"""

import jax
import jax.numpy as jnp


def gae_advantages(rewards, values, next_values, terminated, done, *, gamma, lam):
    """Return (advantages, returns) of a rollout; every argument is [time, *batch].

    Args:
      rewards: r_t.
      values: v_t, the value of the observation at step t.
      next_values: the value of the observation that step t produced, before any reset.
      terminated: the episode ended at a terminal state at step t.
      done: the episode ended at step t, by termination or truncation.
      gamma: discount.
      lam: GAE lambda.

    Returns:
      advantages A_t and returns A_t + v_t, both float32 [time, *batch].
    """
    not_terminated = 1.0 - jnp.asarray(terminated, jnp.float32)
    not_done = 1.0 - jnp.asarray(done, jnp.float32)
    deltas = rewards + gamma * not_terminated * next_values - values

    def backward(next_advantage, step):
        delta, continues = step
        advantage = delta + gamma * lam * continues * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values
