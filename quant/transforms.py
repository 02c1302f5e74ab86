"""Quantization as transformations of a params pytree, and export to integer weights.

A `Policy` is an ordered list of `Rule`s. Each parameter path, its keys joined by "/"
(for example "stage0_block0/conv1/kernel"), takes the first rule whose pattern matches
it, and a path that no rule matches stays float. Patterns are shell-style globs
(`fnmatch.fnmatchcase`) in which `*` also matches "/". Every pattern must match at least
one path of the params it is applied to, so a misspelt layer name raises ValueError
instead of silently leaving the layer float.

Keeping the first and last layers float is standard practice, because they hold few
weights and lose the most accuracy when quantized. `kernel_policy` therefore takes
their names and puts float rules for them before the rule that quantizes every other
kernel. Biases and batch-norm parameters match no kernel rule and stay float.

`quantize_params(params, policy)` returns a pytree of the same structure with every
matched leaf fake-quantized, so it composes with `jax.jit`, `jax.grad`, `jax.vmap` and
`jax.tree_util` like any other params -> params function.

`export(params, policy)` stores the same quantized values as integer codes (int8, int16
or int32, or 1-bit codes packed eight to a byte) and float32 scales. `dequantize` turns
them back into float params equal bit for bit to `quantize_params(params, policy)`, so a
model applied to them gives the same logits as the fake-quantized model. That holds
inside and outside jit because every scale is computed in a fixed order (see
`quantizers.pairwise_sum`).

NOTE: inference on exported weights dequantizes them to float32 before each layer
(weight-only quantization); no path here accumulates integer products and applies the
scales afterwards, which would round differently.
"""

import dataclasses
import fnmatch
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quant import quantizers

FLOAT = "float"
QUANTIZERS = (FLOAT, "binarize", "dorefa", "uniform_symmetric", "lsq")
# Smallest bit width each quantizer accepts; all accept up to quantizers.MAX_BITS.
_MIN_BITS = {"binarize": 1, "dorefa": 1, "uniform_symmetric": 2, "lsq": 2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """Quantization of the parameters whose path matches `pattern`.

    Attributes:
      pattern: glob over the "/"-joined parameter path, e.g. "*/kernel" or "stem/*".
      quantizer: one of QUANTIZERS; "float" leaves the parameter as it is.
      bits: bit width in the quantizer's range (1..16, 2..16 for uniform_symmetric and
        lsq); None for "float", and 1 or None for "binarize".
      channel_axis: axis with one scale per index (-1: output channels of Flax kernels),
        or None for one scale per tensor. DoReFa always uses one scale per tensor.
    """

    pattern: str
    quantizer: str
    bits: int | None = None
    channel_axis: int | None = None

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"pattern={self.pattern!r} must be a non-empty string.")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(
                f"unknown quantizer {self.quantizer!r} in the rule for {self.pattern!r}; "
                f"valid quantizers are {QUANTIZERS}."
            )
        if self.quantizer == FLOAT:
            if self.bits is not None or self.channel_axis is not None:
                raise ValueError(
                    f"the float rule for {self.pattern!r} takes no bits or channel_axis, "
                    f"got bits={self.bits!r}, channel_axis={self.channel_axis!r}."
                )
            return
        if self.quantizer == "binarize":
            if self.bits is None:
                object.__setattr__(self, "bits", 1)
            elif self.bits != 1 or isinstance(self.bits, bool):
                raise ValueError(f"binarize quantizes to 1 bit; the rule for {self.pattern!r} "
                                 f"has bits={self.bits!r}.")
        quantizers.check_bits(self.bits, name=f"bits of the {self.quantizer} rule for {self.pattern!r}",
                              minimum=_MIN_BITS[self.quantizer])
        if self.quantizer == "dorefa" and self.channel_axis is not None:
            raise ValueError(
                f"DoReFa normalises by the max over the whole tensor; the rule for "
                f"{self.pattern!r} must have channel_axis=None, got {self.channel_axis!r}."
            )
        if self.channel_axis is not None and (
            isinstance(self.channel_axis, bool) or not isinstance(self.channel_axis, int)
        ):
            raise ValueError(f"channel_axis={self.channel_axis!r} must be an integer or None.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Rules applied in order; the first rule whose pattern matches a path decides it."""

    rules: tuple[Rule, ...]

    def __post_init__(self):
        rules = tuple(self.rules)
        for rule in rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"policy rules must be Rule instances, got {rule!r}.")
        object.__setattr__(self, "rules", rules)


def kernel_policy(quantizer, bits, *, float_layers, channel_axis=None):
    """Quantize every kernel except those of `float_layers`, which stay float.

    Args:
      quantizer: a name of QUANTIZERS other than "float".
      bits: bit width for `quantizer`.
      float_layers: names of the layers kept float, usually the first and the last, e.g.
        ("stem", "classifier") for `models.resnet20`; each must exist in the params.
      channel_axis: as `Rule.channel_axis`.
    """
    if isinstance(float_layers, str):
        raise ValueError(f"float_layers={float_layers!r} must be a sequence of layer names.")
    keep = tuple(Rule(pattern=f"{name}/*", quantizer=FLOAT) for name in float_layers)
    quantize = Rule(pattern="*/kernel", quantizer=quantizer, bits=bits, channel_axis=channel_axis)
    return Policy(rules=keep + (quantize,))


def path_name(key_path):
    """Join a jax key path with "/", e.g. "stage0_block0/conv1/kernel"."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def resolve(params, policy):
    """Map each parameter path to the rule that decides it, or None where no rule matches.

    Raises:
      ValueError: a rule's pattern matches no parameter path, or a matched parameter that
        is to be quantized is not a floating-point array.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [path_name(key_path) for key_path, _ in leaves]
    for rule in policy.rules:
        if not any(fnmatch.fnmatchcase(path, rule.pattern) for path in paths):
            listed = ", ".join(paths[:12]) + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
            raise ValueError(
                f"policy pattern {rule.pattern!r} matches no parameter path; the paths are: {listed}."
            )
    decided = {}
    for path, (_, leaf) in zip(paths, leaves):
        rule = next((r for r in policy.rules if fnmatch.fnmatchcase(path, r.pattern)), None)
        if rule is not None and rule.quantizer != FLOAT and not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"parameter {path!r} has dtype {jnp.result_type(leaf)}; only floating-point "
                f"parameters can be quantized (rule {rule.pattern!r})."
            )
        decided[path] = rule
    return decided


def _lsq_step_for(path, rule, lsq_steps):
    if lsq_steps is None or path not in lsq_steps:
        raise ValueError(
            f"parameter {path!r} uses LSQ (rule {rule.pattern!r}) but lsq_steps has no step "
            "for it; create the steps with init_lsq_steps(params, policy)."
        )
    return lsq_steps[path]


def quantize_leaf(w, rule, step=None):
    """Fake-quantize one array by `rule`; `step` is the LSQ step for rule.quantizer "lsq"."""
    if rule is None or rule.quantizer == FLOAT:
        return w
    if rule.quantizer == "binarize":
        return quantizers.binarize(w, channel_axis=rule.channel_axis)
    if rule.quantizer == "dorefa":
        return quantizers.dorefa_weights(w, rule.bits)
    if rule.quantizer == "uniform_symmetric":
        return quantizers.uniform_symmetric(w, rule.bits, channel_axis=rule.channel_axis)
    return quantizers.lsq(w, step, rule.bits)


def quantize_params(params, policy, *, lsq_steps=None):
    """Fake-quantize the parameters that `policy` selects; the rest pass through.

    Args:
      params: a pytree of arrays, e.g. `variables["params"]` of a Flax model.
      policy: a `Policy`.
      lsq_steps: path -> step array from `init_lsq_steps`, needed by "lsq" rules; it is
        an ordinary pytree, so the steps can be trained beside the params.

    Returns:
      a pytree with the structure of `params`, matched leaves replaced by their
      dequantized float32 values.

    Raises:
      ValueError: as `resolve`, or an "lsq" path has no step.
    """
    decided = resolve(params, policy)

    def transform(key_path, leaf):
        path = path_name(key_path)
        rule = decided[path]
        step = _lsq_step_for(path, rule, lsq_steps) if rule is not None and rule.quantizer == "lsq" else None
        return quantize_leaf(leaf, rule, step)

    return jax.tree_util.tree_map_with_path(transform, params)


def init_lsq_steps(params, policy):
    """LSQ's initial step, 2 mean|w| / sqrt(Qp), for every parameter of an "lsq" rule.

    With `channel_axis` set, each index along it gets its own step (size-1 axes elsewhere).

    Returns:
      dict path -> float32 step array.
    """
    decided = resolve(params, policy)
    steps = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = path_name(key_path)
        rule = decided[path]
        if rule is None or rule.quantizer != "lsq":
            continue
        _, qp = quantizers.lsq_range(rule.bits, True)
        magnitude = jnp.abs(jnp.asarray(leaf, jnp.float32))
        if rule.channel_axis is None:
            mean = jnp.mean(magnitude)
        else:
            axis = rule.channel_axis % leaf.ndim
            mean = jnp.mean(magnitude, axis=tuple(a for a in range(leaf.ndim) if a != axis), keepdims=True)
        steps[path] = 2 * mean / np.sqrt(qp)
    return steps


def quantized_activation(bits):
    """Return the activation for a model's `activation` argument at `bits` bits.

    None gives `nn.relu`. An integer gives DoReFa's activation quantizer, which clips to
    [0, 1] (a bounded ReLU) and rounds to 2**bits levels, with a straight-through
    gradient inside the clip range.

    Raises:
      ValueError: `bits` is neither None nor an integer in 1..16.
    """
    if bits is None:
        return nn.relu
    quantizers.check_bits(bits, name="activation bits")
    return functools.partial(quantizers.dorefa_activations, bits=bits)


# --------------------------------------------------------------------------------------
# Export to integer weights


@flax.struct.dataclass
class QuantizedArray:
    """One exported parameter: integer codes and the scales that dequantize them.

    Attributes:
      codes: int8, int16 or int32 codes of the parameter's shape. When `packed`, they
        are uint8 [ceil(size / 8)] with one bit per element (1 for +1, 0 for -1), in
        row-major order and most significant bit first.
      scale: float32, [] or broadcastable to `shape` (one per channel).
      shape: shape of the dequantized parameter.
      packed: whether the codes are packed 1-bit signs.
    """

    codes: jax.Array
    scale: jax.Array
    shape: tuple = flax.struct.field(pytree_node=False)
    packed: bool = flax.struct.field(pytree_node=False)

    @property
    def nbytes(self):
        """Bytes of the codes and scales together."""
        return int(self.codes.size * self.codes.dtype.itemsize + self.scale.size * self.scale.dtype.itemsize)

    def dequantize(self):
        """Return codes * scale as float32, the value `quantize_params` gives this parameter."""
        if self.packed:
            size = int(np.prod(self.shape, dtype=np.int64))
            signs = jnp.unpackbits(self.codes)[:size].reshape(self.shape)
            codes = jnp.where(signs == 1, 1.0, -1.0).astype(jnp.float32)
        else:
            codes = self.codes.astype(jnp.float32)
        return codes * self.scale


def _code_range(rule):
    """(lowest, highest) integer code of a multi-bit rule."""
    if rule.quantizer == "dorefa":
        return -(2**rule.bits - 1), 2**rule.bits - 1
    if rule.quantizer == "lsq":
        lowest, highest = quantizers.lsq_range(rule.bits, True)
        return -lowest, highest
    return -(2 ** (rule.bits - 1) - 1), 2 ** (rule.bits - 1) - 1


def _integer_dtype(lowest, highest):
    """The narrowest of int8, int16 and int32 that fits every code."""
    for dtype in (jnp.int8, jnp.int16, jnp.int32):
        info = jnp.iinfo(dtype)
        if info.min <= lowest and highest <= info.max:
            return dtype
    raise ValueError(f"codes in [{lowest}, {highest}] do not fit in int32.")


def export_leaf(w, rule, step=None):
    """Export one array by `rule` as a `QuantizedArray` (or return it unchanged if float)."""
    if rule is None or rule.quantizer == FLOAT:
        return w
    w = jnp.asarray(w, jnp.float32)
    if rule.bits == 1:  # binarize, or DoReFa at 1 bit: signs times a mean-absolute scale
        axis = rule.channel_axis if rule.quantizer == "binarize" else None
        codes, scale = quantizers.binary_parts(w, axis)
        packed = jnp.packbits((codes > 0).astype(jnp.uint8).reshape(-1))
        return QuantizedArray(codes=packed, scale=scale, shape=tuple(w.shape), packed=True)
    if rule.quantizer == "dorefa":
        codes, scale = quantizers.dorefa_weight_parts(w, rule.bits)
    elif rule.quantizer == "uniform_symmetric":
        codes, scale = quantizers.uniform_symmetric_parts(w, rule.bits, rule.channel_axis)
    else:
        codes, scale = quantizers.lsq_parts(w, step, rule.bits)
    dtype = _integer_dtype(*_code_range(rule))
    return QuantizedArray(codes=codes.astype(dtype), scale=jnp.asarray(scale, jnp.float32),
                          shape=tuple(w.shape), packed=False)


def export(params, policy, *, lsq_steps=None):
    """Export the parameters that `policy` quantizes as integer codes plus scales.

    Returns:
      a pytree with the structure of `params` in which every quantized leaf is a
      `QuantizedArray` and every other leaf is unchanged.

    Raises:
      ValueError: as `quantize_params`.
    """
    decided = resolve(params, policy)

    def transform(key_path, leaf):
        path = path_name(key_path)
        rule = decided[path]
        step = _lsq_step_for(path, rule, lsq_steps) if rule is not None and rule.quantizer == "lsq" else None
        return export_leaf(leaf, rule, step)

    return jax.tree_util.tree_map_with_path(transform, params)


def _is_quantized(node):
    return isinstance(node, QuantizedArray)


def dequantize(exported):
    """Rebuild float32 params from `export`'s output; jit-able, so the codes stay integer in memory."""
    return jax.tree_util.tree_map(
        lambda node: node.dequantize() if _is_quantized(node) else node, exported, is_leaf=_is_quantized
    )


def storage_bytes(tree):
    """Bytes that the arrays of `tree` occupy, counting exported codes at their integer size."""
    total = 0
    for node in jax.tree_util.tree_leaves(tree, is_leaf=_is_quantized):
        total += node.nbytes if _is_quantized(node) else int(np.asarray(node).nbytes)
    return total
