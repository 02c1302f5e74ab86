"""Environments behind the gymnax API, and the Noisy TV and sticky-action wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import envs, wrappers

FORWARD, TURN_RIGHT, DONE = 0, 1, 6


def run_actions(env, params, actions, seed=0):
    """Reset, then step through `actions`; return the first observation and the stacked steps.

    Steps run one at a time through the environment's own jitted `step`, which compiles
    once per environment object, so tests that share a fixture share the compilation.
    """
    reset_key, steps_key = jax.random.split(jax.random.key(seed))
    first, state = env.reset(reset_key, params)
    outputs = []
    for key, action in zip(jax.random.split(steps_key, len(actions)), actions):
        obs, state, reward, terminated, truncated, info = env.step(key, state, jnp.int32(action), params)
        outputs.append((obs, reward, terminated, truncated, info))
    return first, jax.tree.map(lambda *leaves: np.stack(leaves), *outputs)


@pytest.fixture(scope="module")
def empty():
    return envs.make_base("MiniGrid-Empty-8x8")


@pytest.fixture(scope="module")
def doorkey():
    return envs.make_base("MiniGrid-DoorKey-5x5")


@pytest.fixture(scope="module")
def breakout():
    return envs.make_base("Breakout-MinAtar")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown environment 'MiniGrid-KeyCorridor'.*Breakout-MinAtar"):
        envs.make_env("MiniGrid-KeyCorridor")


def test_minigrid_reaches_goal_and_terminates(empty):
    env, params = empty
    logged = envs.LogWrapper(env)
    # The agent starts at (1, 1) facing right; the goal is at (6, 6).
    actions = [FORWARD] * 5 + [TURN_RIGHT] + [FORWARD] * 5 + [DONE]
    first, (_, reward, terminated, truncated, info) = run_actions(logged, params, actions)

    assert first.shape == (7, 7, 25)
    assert first.dtype == jnp.float32
    np.testing.assert_array_equal(first[..., :13].sum(-1), np.ones((7, 7)))  # one tile per cell
    np.testing.assert_array_equal(first[..., 13:].sum(-1), np.ones((7, 7)))  # one colour per cell
    assert env.num_actions == 7

    assert np.flatnonzero(terminated).tolist() == [10]
    assert not np.any(truncated)
    assert float(reward[10]) == pytest.approx(1 - 0.9 * 11 / 256)
    assert float(reward.sum()) == pytest.approx(float(reward[10]))
    # gymnax's LogWrapper reports the finished episode.
    assert np.flatnonzero(info["returned_episode"]).tolist() == [10]
    assert float(info["returned_episode_returns"][10]) == pytest.approx(float(reward[10]))


def test_minigrid_done_action_and_truncation(doorkey):
    env, params = doorkey
    assert params.max_steps_in_episode == 250
    first, (obs, reward, terminated, truncated, info) = run_actions(env, params, [DONE] * 251)

    # "done" only spends a step: the view stays, no reward, no termination.
    for step in range(249):
        np.testing.assert_array_equal(obs[step], first)
    assert float(reward.sum()) == 0.0
    assert not np.any(terminated)

    # The time limit truncates at step 250. The final observation is the view before
    # the automatic reset, and the next observation starts a new layout.
    assert np.flatnonzero(truncated).tolist() == [249]
    np.testing.assert_array_equal(info["final_observation"][249], first)
    assert not np.array_equal(obs[249], first)


def test_minatar_observation_is_float():
    env, params = envs.make_env("Breakout-MinAtar")
    obs, _ = env.reset(jax.random.key(1), params)
    assert obs.shape == (10, 10, 4)
    assert obs.dtype == jnp.float32
    assert env.num_actions == 3


def test_noisy_tv_noise_and_shuffle(empty):
    plain, params = empty
    actions = [FORWARD, DONE, FORWARD, DONE]
    _, (plain_obs, *_) = run_actions(plain, params, actions)

    noise = wrappers.NoisyTV(plain, mode="noise", tv_action=DONE)
    _, (noise_obs, *_, info) = run_actions(noise, params, actions)
    np.testing.assert_array_equal(info["tv_on"], [False, True, False, True])
    np.testing.assert_array_equal(noise_obs[0], plain_obs[0])
    np.testing.assert_array_equal(noise_obs[2], plain_obs[2])
    tv = noise_obs[1]
    assert tv.min() >= 0.0
    assert tv.max() <= 1.0
    assert len(np.unique(tv)) > 1000  # uniform noise, not one-hot cells
    assert not np.array_equal(noise_obs[1], noise_obs[3])  # fresh noise every time

    shuffle = wrappers.NoisyTV(plain, mode="shuffle", tv_action=DONE)
    _, (shuffle_obs, *_) = run_actions(shuffle, params, actions)
    np.testing.assert_array_equal(shuffle_obs[0], plain_obs[0])
    for step in (1, 3):
        rows = sorted(map(bytes, shuffle_obs[step].reshape(7, -1)))
        expected_rows = sorted(map(bytes, plain_obs[step].reshape(7, -1)))
        assert rows == expected_rows
        assert not np.array_equal(shuffle_obs[step], plain_obs[step])


def test_noisy_tv_appended_action_runs_noop(breakout):
    plain, params = breakout
    noisy = wrappers.NoisyTV(plain, mode="noise", noop_action=0)
    assert noisy.num_actions == 4
    assert noisy.action_space(params).n == 4

    reset_key, step_key = jax.random.split(jax.random.key(2))
    inner_key, _ = jax.random.split(jax.random.clone(step_key))  # the key NoisyTV passes on
    obs, state = noisy.reset(reset_key, params)
    _, noop_state, *_ = plain.step(inner_key, jax.tree.map(jnp.copy, state), 0, params)
    tv_obs, tv_state, _, _, _, info = noisy.step(step_key, state, 3, params)

    assert bool(info["tv_on"])
    for tv_leaf, noop_leaf in zip(jax.tree.leaves(tv_state), jax.tree.leaves(noop_state)):
        np.testing.assert_array_equal(tv_leaf, noop_leaf)
    assert not np.array_equal(tv_obs, obs)


@pytest.mark.parametrize("args, message", [
    ({"mode": "static"}, "noisy TV mode='static' is not valid"),
    ({"tv_action": 7}, r"tv_action=7 is outside the inner action range \[0, 6\]"),
])
def test_noisy_tv_rejects_bad_arguments(empty, args, message):
    env, _ = empty
    with pytest.raises(ValueError, match=message):
        wrappers.NoisyTV(env, **args)


def executed_actions(breakout, p, requested, seed=0):
    env, params = breakout
    sticky = wrappers.StickyActions(env, p=p)
    _, (_, _, terminated, truncated, info) = run_actions(sticky, params, requested, seed=seed)
    return info["executed_action"], terminated | truncated


def test_sticky_actions_extremes(breakout):
    requested = [1, 2, 1, 2, 1, 2]
    executed, _ = executed_actions(breakout, 0.0, requested)
    np.testing.assert_array_equal(executed, requested)
    executed, _ = executed_actions(breakout, 1.0, requested)
    np.testing.assert_array_equal(executed, np.zeros(6))


def test_sticky_actions_repeat_at_rate_p(breakout):
    requested = np.tile([1, 2], 1000)
    executed, done = executed_actions(breakout, 0.25, requested, seed=4)
    repeated = executed != requested
    # A repeat is visible only when the previous executed action differs from the
    # requested one. The previous action is the no-op at the start of each episode.
    previous = np.concatenate([[0], np.where(done[:-1], 0, executed[:-1])])
    visible = previous != requested
    rate = repeated[visible].mean()
    assert rate == pytest.approx(0.25, abs=5 * np.sqrt(0.25 * 0.75 / visible.sum()))
    # After an episode ends, a repeat executes the no-op.
    after_end = np.flatnonzero(done[:-1]) + 1
    assert set(executed[after_end][repeated[after_end]]) <= {0}


def test_sticky_actions_reject_bad_probability(breakout):
    env, _ = breakout
    with pytest.raises(ValueError, match=r"p=1.5 is outside \[0, 1\]"):
        wrappers.StickyActions(env, p=1.5)
