"""Environment steps per second of PPO with TeCLE against plain PPO, in one run.

Run: `python -m benchmarks.rl` (`--env`, `--num-envs`, `--num-steps`, `--updates`,
`--rounds`, `--update-proportion` and `--full-size` change the set-up; `--help` lists
them).

Both variants train on the same environment with the same batch (environments, steps
per rollout, epochs, minibatches) through `rl.ppo.make_train`, compiled before timing.
Rounds alternate between the variants, and each figure is the median over the rounds of
one whole `train(key)` call: rollouts, intrinsic rewards, GAE and every update. The goal
is TeCLE at no less than half plain PPO's steps per second.

By default TeCLE uses the networks of the `small` preset of `scripts.tecle`, which
train on a quarter of each minibatch; `--full-size` uses the authors' sizes
(`rl.intrinsic.IntrinsicConfig` defaults) and `--update-proportion 1` every row.
"""

import argparse
import dataclasses
import platform
import statistics
import time

import jax

from rl import intrinsic, ppo
from scripts import tecle


def make_config(args, method):
    """Build the PPOConfig of one variant; both share everything but the intrinsic module."""
    base = tecle.PRESETS["small"]
    sizes = intrinsic.IntrinsicConfig() if args.full_size else base.ppo.intrinsic
    minigrid = args.env.startswith("MiniGrid")
    return dataclasses.replace(
        base.ppo, env=args.env, num_envs=args.num_envs, num_steps=args.num_steps,
        total_timesteps=args.num_envs * args.num_steps * args.updates,
        torso="mlp" if minigrid else "cnn", int_coef=0.0 if method == "none" else base.ppo.int_coef,
        intrinsic=dataclasses.replace(sizes, method=method, beta=1.0,
                                      update_proportion=(sizes.update_proportion if args.update_proportion is None
                                                         else args.update_proportion)),
    )


def time_variants(args):
    """Compile both variants, then time alternating rounds; return median seconds per call."""
    programs = {}
    for label, method in (("PPO", "none"), ("PPO + TeCLE", "tecle")):
        train = jax.jit(ppo.make_train(make_config(args, method)))
        started = time.perf_counter()
        jax.block_until_ready(train(jax.random.key(0)))
        print(f"{label}: compiled and ran once in {time.perf_counter() - started:.1f} s", flush=True)
        programs[label] = train
    seconds = {label: [] for label in programs}
    for round_index in range(args.rounds):
        for label, train in programs.items():
            started = time.perf_counter()
            jax.block_until_ready(train(jax.random.key(round_index + 1)))
            seconds[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in seconds.items()}


def positive_int(text):
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not valid; give an integer of at least 1")
    return value


def parse_args(argv=None):
    """Parse and check the command line; a bad value exits with status 2 and one line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MiniGrid-DoorKey-8x8", help="environment name from rl.envs")
    parser.add_argument("--num-envs", type=positive_int, default=16, help="environments stepped in parallel")
    parser.add_argument("--num-steps", type=positive_int, default=64, help="steps per environment per rollout")
    parser.add_argument("--updates", type=positive_int, default=10, help="PPO updates per timed call")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed calls per variant")
    parser.add_argument("--full-size", action="store_true", help="TeCLE networks at the authors' sizes")
    parser.add_argument("--update-proportion", type=float, default=None,
                        help="fraction of each minibatch TeCLE trains on (default: that of the chosen sizes)")
    args = parser.parse_args(argv)
    try:
        for method in ("none", "tecle"):
            ppo.validate(make_config(args, method))
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_args(argv)

    print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"JAX {jax.__version__}")
    medians = time_variants(args)
    steps = args.num_envs * args.num_steps * args.updates
    reference = medians["PPO"]
    updates = f"{args.updates} update{'s' if args.updates > 1 else ''}"
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
    print(f"\n{args.env}, {args.num_envs} environments x {args.num_steps} steps, {updates} "
          f"({steps:,} environment steps per call), median of {rounds}")
    print("| variant | s/call | env steps/s | ratio to PPO |")
    print("|---|---|---|---|")
    for label, seconds in medians.items():
        print(f"| {label} | {seconds:.2f} | {steps / seconds:,.0f} | {reference / seconds:.2f} |")


if __name__ == "__main__":
    main()
