"""Approximate multipliers for CNN inference, emulated bit for bit on float32.

Elementwise multipliers (`mitchell_mul`, `bf16_mul`), bfloat16 rounding, a registry of
multipliers by name, contractions (`dot_general`, `conv_general_dilated`) whose products
use a chosen multiplier with exact float32 accumulation, and Flax layers built on them.
"""

from approx.bfloat16 import bf16_mul, bf16_round
from approx.dot import conv_general_dilated, dot_general, matmul
from approx.mitchell import mitchell_mul
from approx.registry import Multiplier, as_multiplier, get_multiplier, multiplier_names

__all__ = [
    "Multiplier",
    "as_multiplier",
    "bf16_mul",
    "bf16_round",
    "conv_general_dilated",
    "dot_general",
    "get_multiplier",
    "matmul",
    "mitchell_mul",
    "multiplier_names",
]
