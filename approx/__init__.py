"""Approximate multipliers for CNN inference, emulated bit for bit on float32.

Elementwise multipliers (`mitchell_mul`, `bf16_mul`, `truncated_mul`, `drum_mul`,
`ilm_mul`), bfloat16 rounding, a registry of
multipliers by name, contractions (`dot_general`, `conv_general_dilated`) whose products
use a chosen multiplier with exact float32 accumulation, and Flax layers built on them.
"""

from approx.bfloat16 import bf16_mul, bf16_round
from approx.dot import conv_general_dilated, dot_general, matmul
from approx.ilm import ilm_mul
from approx.mitchell import mitchell_mul
from approx.registry import Multiplier, as_multiplier, get_multiplier, multiplier_names
from approx.truncated import drum_mul, drum_round, truncate_significand, truncated_mul

__all__ = [
    "Multiplier",
    "as_multiplier",
    "bf16_mul",
    "bf16_round",
    "conv_general_dilated",
    "dot_general",
    "drum_mul",
    "drum_round",
    "ilm_mul",
    "get_multiplier",
    "matmul",
    "mitchell_mul",
    "multiplier_names",
    "truncate_significand",
    "truncated_mul",
]
