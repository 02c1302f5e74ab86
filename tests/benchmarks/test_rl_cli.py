"""benchmarks.rl rejects bad options with one line on stderr and status 2, before timing."""

import pytest

from benchmarks import rl as rl_benchmark


@pytest.mark.parametrize("args, message", [
    (["--env", "Nowhere"], "unknown environment 'Nowhere'"),
    (["--rounds", "0"], "argument --rounds: 0 is not valid; give an integer of at least 1"),
    (["--updates", "0"], "argument --updates: 0 is not valid"),
    (["--num-envs", "3", "--num-steps", "5"], "num_minibatches=4 does not divide the batch size"),
    (["--update-proportion", "1.5"], "update_proportion=1.5 is outside (0, 1]"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_option_exits_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rl_benchmark.parse_args(args)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[-1].startswith("python -m benchmarks.rl: error: "), stderr
    assert message in stderr[-1], stderr


def test_defaults_parse():
    args = rl_benchmark.parse_args([])
    assert (args.env, args.num_envs, args.num_steps, args.rounds) == ("MiniGrid-DoorKey-8x8", 16, 64, 3)
