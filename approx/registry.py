"""Multipliers by name, so that layers and scripts accept `"mitchell"` as well as a function.

A `Multiplier` bundles the elementwise function with the facts a contraction needs to
run it fast:

    | kind          | products                                   | contraction strategy       |
    |---------------|--------------------------------------------|----------------------------|
    | "native"      | exact float32 products of rounded operands | `lax.dot_general` on the   |
    |               | (exact, bf16, truncated, drum)             | rounded operands           |
    | "log"         | Mitchell products from per-operand logs    | integer add per product    |
    | "elementwise" | any `f(a, b) -> float32`                   | broadcast, multiply, sum   |

Two `Multiplier`s are equal when their names and parameters are, so a multiplier can be
a static argument of a jitted function without recompiling for every new instance.
"""

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from approx import bfloat16, ilm, mitchell, truncated


@dataclasses.dataclass(frozen=True)
class Multiplier:
    """An approximate (or exact) float32 multiplier and how to contract with it.

    Attributes:
      name: registry name, e.g. "mitchell".
      params: keyword parameters as sorted (key, value) pairs, e.g. (("unbiased", False), ("w", 6)).
      label: short human-readable name for tables and plots, e.g. "Mitch-w6".
      kind: "native", "log" or "elementwise"; see the module docstring.
      multiply: elementwise float32 function (a, b) -> a*b as this multiplier computes it.
      round_operand: for kind "native", the operand rounding before an exact product.
    """

    name: str
    params: tuple
    label: str
    kind: str
    multiply: Callable = dataclasses.field(compare=False, repr=False)
    round_operand: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    def __call__(self, a, b):
        return self.multiply(a, b)

    @property
    def config(self) -> dict[str, Any]:
        """Parameters as a dict, for reports."""
        return dict(self.params)


def _identity(x):
    return jnp.asarray(x, jnp.float32)


def _exact(a, b):
    return jnp.asarray(a, jnp.float32) * jnp.asarray(b, jnp.float32)


def _make_exact():
    return Multiplier("exact", (), "FP32", "native", _exact, _identity)


def _make_bf16(mode="nearest"):
    bfloat16.check_mode(mode)
    label = "bf16" if mode == "nearest" else "bf16-trunc"

    def multiply(a, b):
        return bfloat16.bf16_mul(a, b, mode=mode)

    def round_operand(x):
        return bfloat16.bf16_round(x, mode=mode)

    return Multiplier("bf16", (("mode", mode),), label, "native", multiply, round_operand)


def _make_mitchell(w=23, unbiased=False):
    mitchell.check_width(w)
    unbiased = bool(unbiased)
    label = f"Mitch-w{w}" + ("-unbiased" if unbiased else "")

    def multiply(a, b):
        return mitchell.mitchell_mul(a, b, w=w, unbiased=unbiased)

    params = (("unbiased", unbiased), ("w", w))
    return Multiplier("mitchell", params, label, "log", multiply)


def _make_truncated(w=23):
    truncated.check_fraction_bits(w)

    def round_operand(x):
        return truncated.truncate_significand(x, w=w)

    def multiply(a, b):
        return round_operand(a) * round_operand(b)

    return Multiplier("truncated", (("w", w),), f"Trunc-w{w}", "native", multiply, round_operand)


def _make_drum(k=6):
    truncated.check_fraction_bits(k, "k", 1, 24)

    def round_operand(x):
        return truncated.drum_round(x, k=k)

    def multiply(a, b):
        return round_operand(a) * round_operand(b)

    return Multiplier("drum", (("k", k),), f"DRUM-{k}", "native", multiply, round_operand)


def _make_ilm(iterations=1, w=23):
    ilm.check_iterations(iterations)
    mitchell.check_width(w)
    label = f"ILM-{iterations}" + (f"-w{w}" if w != 23 else "")

    def multiply(a, b):
        return ilm.ilm_mul(a, b, iterations=iterations, w=w)

    params = (("iterations", iterations), ("w", w))
    return Multiplier("ilm", params, label, "elementwise", multiply)


_FACTORIES = {
    "exact": _make_exact,
    "bf16": _make_bf16,
    "mitchell": _make_mitchell,
    "truncated": _make_truncated,
    "drum": _make_drum,
    "ilm": _make_ilm,
}


def multiplier_names():
    """Names accepted by `get_multiplier`."""
    return tuple(sorted(_FACTORIES))


def get_multiplier(name, **params):
    """Build a registered multiplier.

    Examples: `get_multiplier("exact")`, `get_multiplier("bf16", mode="truncate")`,
    `get_multiplier("mitchell", w=6, unbiased=True)`, `get_multiplier("truncated", w=8)`,
    `get_multiplier("drum", k=6)`, `get_multiplier("ilm", iterations=2)`.

    Raises:
      ValueError: on an unknown name, an unknown parameter or an invalid parameter value.
    """
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown multiplier {name!r}; registered multipliers are {multiplier_names()}."
        )
    try:
        return _FACTORIES[name](**params)
    except TypeError as error:
        raise ValueError(f"invalid parameters {params} for multiplier {name!r}: {error}") from None


def as_multiplier(multiplier):
    """Coerce a name, a `Multiplier` or an elementwise function to a `Multiplier`.

    A plain function `f(a, b) -> float32` becomes an "elementwise" multiplier; it must
    broadcast like `*`. `None` means exact multiplication.
    """
    if multiplier is None:
        return _make_exact()
    if isinstance(multiplier, Multiplier):
        return multiplier
    if isinstance(multiplier, str):
        return get_multiplier(multiplier)
    if callable(multiplier):
        name = getattr(multiplier, "__name__", type(multiplier).__name__)
        return Multiplier(name, (("function", multiplier),), name, "elementwise", multiplier)
    raise ValueError(
        f"multiplier={multiplier!r} is neither a registered name {multiplier_names()}, "
        "a Multiplier, nor a function f(a, b)."
    )
