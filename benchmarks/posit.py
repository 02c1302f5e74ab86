"""Throughput of the posit emulator against float32 multiplication and SoftPosit.

For posit<16,1> and posit<32,2> this times `mul`, `plam_mul`, `add`, `encode` and
`decode` on the same random arrays as a jitted float32 multiply, all in one run, and
SoftPosit's Python binding calling its C functions once per element on a sample.

Run from the repository root: `python -m benchmarks.posit` (`--help` for the sizes).
It prints a Markdown table; BENCHMARKS.md records the latest figures.
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from approx import posit
from approx.posit import PositFormat

FORMATS = (PositFormat(16, 1), PositFormat(32, 2))


def seconds_per_call(function, *args, repeats):
    """Median wall time of `function(*args)` after one warm-up (compilation) call."""
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def softposit_rates(fmt, a, b, x):
    """Elements per second of SoftPosit's mul, add and double conversion, or None if absent.

    Each element is one Python call into SoftPosit's C function on prebuilt operands.
    """
    try:
        import softposit
    except ImportError:
        return None
    prefix = {16: "p16", 32: "p32"}[fmt.nbits]
    value_type = getattr(softposit, f"posit{fmt.nbits}_t")

    def wrap(bits):
        value = value_type()
        value.v = int(bits)
        return value

    operands_a, operands_b = [wrap(v) for v in a], [wrap(v) for v in b]
    doubles = [float(v) for v in x]
    multiply, add = getattr(softposit, f"{prefix}_mul"), getattr(softposit, f"{prefix}_add")
    convert = getattr(softposit, f"convertDoubleToP{fmt.nbits}")

    def rate(loop):
        start = time.perf_counter()
        loop()
        return len(doubles) / (time.perf_counter() - start)

    return {
        "mul": rate(lambda: [multiply(p, q) for p, q in zip(operands_a, operands_b)]),
        "add": rate(lambda: [add(p, q) for p, q in zip(operands_a, operands_b)]),
        "encode": rate(lambda: [convert(v) for v in doubles]),
    }


def benchmark_format(fmt, elements, repeats, softposit_elements):
    """Rows (operation, elements/s, time / float32 multiply time, speed-up over SoftPosit)."""
    x = jax.random.normal(jax.random.key(0), (elements,), jnp.float32)
    y = jax.random.normal(jax.random.key(1), (elements,), jnp.float32)
    a, b = posit.encode(x, fmt), posit.encode(y, fmt)
    float_multiply = jax.jit(lambda p, q: p * q)
    baseline = seconds_per_call(float_multiply, x, y, repeats=repeats)

    timings = {
        "float32 multiply": baseline,
        "mul": seconds_per_call(posit.mul, a, b, fmt, repeats=repeats),
        "plam_mul": seconds_per_call(posit.plam_mul, a, b, fmt, repeats=repeats),
        "add": seconds_per_call(posit.add, a, b, fmt, repeats=repeats),
        "encode": seconds_per_call(posit.encode, x, fmt, repeats=repeats),
        "decode": seconds_per_call(posit.decode, a, fmt, repeats=repeats),
    }
    sample = slice(0, softposit_elements)
    reference = softposit_rates(fmt, np.asarray(a[sample]), np.asarray(b[sample]), np.asarray(x[sample]))

    rows = []
    for name, seconds in timings.items():
        rate = elements / seconds
        against = "" if reference is None or name not in reference else f"{rate / reference[name]:,.0f}x"
        rows.append((str(fmt), name, f"{rate / 1e6:,.1f}", f"{seconds / baseline:.2f}", against))
    if reference is not None:
        for name, rate in reference.items():
            rows.append((str(fmt), f"SoftPosit {name} (Python loop)", f"{rate / 1e6:,.2f}",
                         f"{elements / rate / baseline:,.0f}", ""))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.posit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=1 << 20, help="array length of each timed call")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per operation; the median is kept")
    parser.add_argument("--softposit-elements", type=int, default=50_000,
                        help="elements of the SoftPosit sample")
    args = parser.parse_args(argv)

    print(f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; {args.elements:,} elements, "
          f"median of {args.repeats}.\n")
    print("| format | operation | M elements/s | time / float32 multiply | faster than SoftPosit |")
    print("|---|---|---|---|---|")
    for fmt in FORMATS:
        for row in benchmark_format(fmt, args.elements, args.repeats, args.softposit_elements):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
