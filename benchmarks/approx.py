"""Speed of emulated multipliers against the native operation they replace, in one run.

Run: `python -m benchmarks.approx` (add `--quick` for fewer repeats and smaller shapes).

For each multiplier it times, on the same operands and interleaved repeat by repeat:
- a 512 x 512 x 256 float32 matmul (`approx.matmul` against `jnp.dot`);
- a ResNet-20 forward pass on a batch of CIFAR-sized inputs (approximate layers against
  `flax.linen` layers with the same parameters).
It prints the best wall time and the process CPU time of each, and their ratios to the
native operation. CPU time counts every thread of this process and nothing else, so its
ratio moves less than the wall-time ratio when other programs share the machine.

It also compiles a matmul whose M x K x N product tensor would need tens of gigabytes and
prints XLA's temporary-buffer size for it, to show that memory follows the chunk size.
"""

import argparse
import functools
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import approx
from approx import dot
from approx.layers import Conv, Dense
from models import resnet20

MULTIPLIERS = (
    ("mitchell", {"w": 6}),
    ("mitchell", {"w": 23}),
    ("mitchell", {"w": 6, "unbiased": True}),
    ("bf16", {}),
    ("truncated", {"w": 8}),
    ("drum", {"k": 6}),
    ("ilm", {"iterations": 1}),
)


def best_times(functions, repeats):
    """Best wall and CPU seconds of each zero-argument function, interleaved over repeats."""
    for function in functions.values():
        jax.block_until_ready(function())
    wall = {name: float("inf") for name in functions}
    cpu = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            jax.block_until_ready(function())
            wall[name] = min(wall[name], time.perf_counter() - wall_start)
            cpu[name] = min(cpu[name], time.process_time() - cpu_start)
    return wall, cpu


def print_table(title, wall, cpu, reference):
    print(f"\n{title}")
    print(f"| {'operation':<22} | {'wall ms':>9} | {'wall ratio':>10} | {'CPU ms':>9} | {'CPU ratio':>9} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 11}|")
    for name in wall:
        print(
            f"| {name:<22} | {wall[name] * 1e3:9.2f} | {wall[name] / wall[reference]:10.1f} | "
            f"{cpu[name] * 1e3:9.2f} | {cpu[name] / cpu[reference]:9.1f} |"
        )


def bench_matmul(shape, repeats, names):
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
    b = jnp.asarray(rng.standard_normal((k, n)).astype(np.float32))
    native = jax.jit(lambda x, y: jnp.dot(x, y, precision=lax.Precision.HIGHEST))
    functions = {"jnp.dot (float32)": lambda: native(a, b)}
    for name, params in names:
        multiplier = approx.get_multiplier(name, **params)
        functions[multiplier.label] = functools.partial(approx.matmul, a, b, multiplier=multiplier)
    wall, cpu = best_times(functions, repeats)
    print_table(f"matmul {m} x {k} x {n}", wall, cpu, "jnp.dot (float32)")


def bench_resnet(batch, repeats, names):
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    exact_model = resnet20(conv=nn.Conv, dense=nn.Dense)
    variables = exact_model.init(jax.random.key(1), x)
    native = jax.jit(exact_model.apply)
    functions = {"ResNet-20 (flax)": lambda: native(variables, x)}
    for name, params in names:
        multiplier = approx.get_multiplier(name, **params)
        model = resnet20(conv=functools.partial(Conv, multiplier=multiplier),
                         dense=functools.partial(Dense, multiplier=multiplier))
        apply = jax.jit(model.apply)
        functions[multiplier.label] = functools.partial(apply, variables, x)
    wall, cpu = best_times(functions, repeats)
    print_table(f"ResNet-20 forward, batch {batch}", wall, cpu, "ResNet-20 (flax)")


def report_memory(shape):
    m, k, n = shape
    a = jax.ShapeDtypeStruct((m, k), jnp.float32)
    b = jax.ShapeDtypeStruct((k, n), jnp.float32)
    multiplier = approx.get_multiplier("mitchell", w=6)
    compiled = jax.jit(
        functools.partial(approx.matmul, multiplier=multiplier)
    ).lower(a, b).compile()
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None)
    print(f"\nmemory: Mitch-w6 matmul {m} x {k} x {n}; a product tensor would take "
          f"{m * k * n * 4 / 2**30:.0f} GiB; XLA temporaries: "
          f"{'unknown' if temp is None else f'{temp / 2**20:.1f} MiB'} "
          f"(chunk_elements = {dot.DEFAULT_CHUNK_ELEMENTS:,})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller batch")
    parser.add_argument("--only", default="", help="comma-separated multiplier names to run")
    args = parser.parse_args()
    names = [m for m in MULTIPLIERS if not args.only or m[0] in args.only.split(",")]
    repeats = 2 if args.quick else 5

    print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"JAX {jax.__version__}")
    bench_matmul((512, 512, 256), repeats, names)
    bench_resnet(16 if args.quick else 64, repeats, [m for m in names if m[0] != "ilm"])
    report_memory((4096, 4096, 4096))


if __name__ == "__main__":
    main()
