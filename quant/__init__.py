"""Low-bit quantization as transformations of a params pytree, and cyclic training.

`quant.quantizers` contains the quantizers (DoReFa, binarization, uniform symmetric, LSQ)
with explicit straight-through gradients; `quant.transforms` applies them to a params
pytree by path patterns and exports integer weights; `quant.cyclic` runs progressive bit
reduction and cyclic training (CTMQ) over any training function.
"""

from quant.quantizers import binarize, dorefa_activations, dorefa_weights, lsq, uniform_symmetric

__all__ = ["binarize", "dorefa_activations", "dorefa_weights", "lsq", "uniform_symmetric"]
