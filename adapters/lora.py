"""LoRA (low-rank adaptation) as transformations of a params pytree.

Glossary:
  kernel W     a dense layer's weight, [in, out] as Flax stores it (y = x W).
  rank r       inner dimension of the update; r >= 1.
  A, B         the adapter factors, A [in, r] random, B [r, out] zero at init, so the
               adapted model equals the frozen one until B is trained.
  alpha        update scale numerator. The update is (alpha / r) * A B, so the initial
               update size stays comparable across ranks (Hu et al., 2021).
  lora_params  nested dict mirroring `params` with {"A", "B"} in place of {"kernel"}
               at every targeted layer, and nothing elsewhere.

`merge` adds the update into the kernels, `unmerge` subtracts it again. In exact
arithmetic the round trip is the identity; in float32 each of the two roundings errs by
at most half an ulp of its result, so `unmerge(merge(W))` differs from W by at most
eps * (|W| + |W + (alpha / r) A B|) elementwise (eps = 2^-23), and not at all while B is
zero. A training step differentiates the loss through `merge`, so only A and B train.
"""

import jax
import jax.numpy as jnp

DEFAULT_TARGETS = ("q_proj", "v_proj")


def _check_rank(rank):
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank={rank!r} is not valid; LoRA needs an integer rank >= 1.")


def _targeted_kernels(params, targets, prefix=()):
    """Yield (path, kernel) for every `kernel` whose parent module name is in `targets`."""
    for name, value in params.items():
        path = prefix + (name,)
        if isinstance(value, dict):
            if name in targets and "kernel" in value:
                yield path, value["kernel"]
            else:
                yield from _targeted_kernels(value, targets, path)


def _set_in(tree, path, value):
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def init(key, params, *, rank, targets=DEFAULT_TARGETS, dtype=jnp.float32):
    """Create LoRA factors for every kernel of a module named in `targets`.

    Args:
      key: PRNG key for the A factors.
      params: the frozen model's params; kernels are [in, out].
      rank: inner dimension r >= 1.
      targets: module names whose `kernel` gets an adapter (e.g. "q_proj").

    Returns:
      lora_params: nested dict of {"A": [in, r] ~ N(0, 1/in), "B": zeros [r, out]}.

    Raises:
      ValueError: rank < 1, or no kernel matches `targets`.
    """
    _check_rank(rank)
    found = list(_targeted_kernels(params, tuple(targets)))
    if not found:
        raise ValueError(f"no kernel in params belongs to a module named one of {tuple(targets)}; "
                         "pass the module names of the layers to adapt.")
    lora_params = {}
    for index, (path, kernel) in enumerate(found):
        fan_in, fan_out = kernel.shape
        factor_key = jax.random.fold_in(key, index)
        a = jax.random.normal(factor_key, (fan_in, rank), dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))
        _set_in(lora_params, path, {"A": a, "B": jnp.zeros((rank, fan_out), dtype)})
    return lora_params


def delta(factors, *, alpha, rank):
    """Compute the kernel update (alpha / rank) * A B, [in, out], of one layer's {"A", "B"}."""
    return (alpha / rank) * (factors["A"] @ factors["B"])


def _apply(params, lora_params, sign, alpha, rank):
    _check_rank(rank)
    out = {}
    for name, value in params.items():
        if name not in lora_params:
            out[name] = value
        elif "A" in lora_params[name]:
            updated = dict(value)
            update = delta(lora_params[name], alpha=alpha, rank=rank).astype(value["kernel"].dtype)
            updated["kernel"] = value["kernel"] + sign * update
            out[name] = updated
        else:
            out[name] = _apply(value, lora_params[name], sign, alpha, rank)
    return out


def merge(params, lora_params, *, alpha, rank):
    """Return params with (alpha / rank) * A B added to every adapted kernel.

    The input pytrees are not modified; untargeted leaves are shared, not copied.
    """
    return _apply(params, lora_params, 1, alpha, rank)


def unmerge(params, lora_params, *, alpha, rank):
    """Return params with (alpha / rank) * A B subtracted again: the inverse of `merge`.

    Exact while B is zero; otherwise within the rounding bound of the module docstring.
    """
    return _apply(params, lora_params, -1, alpha, rank)


def count(lora_params):
    """Number of trainable scalars in `lora_params`."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(lora_params))


def make_train_step(loss_fn, optimizer, *, alpha, rank):
    """Build a jitted step that trains only the LoRA factors.

    Args:
      loss_fn: (params, batch) -> scalar loss of the model with the given params.
      optimizer: an optax GradientTransformation, closed over (not a jit argument), so
        the step compiles once.
      alpha, rank: the update scale, as in `merge`.

    Returns:
      step(lora_params, opt_state, params, batch) -> (lora_params, opt_state, loss).
      The frozen `params` receive no gradient.
    """
    _check_rank(rank)

    def adapted_loss(lora_params, params, batch):
        return loss_fn(merge(params, lora_params, alpha=alpha, rank=rank), batch)

    @jax.jit
    def step(lora_params, opt_state, params, batch):
        loss, grads = jax.value_and_grad(adapted_loss)(lora_params, jax.lax.stop_gradient(params), batch)
        updates, opt_state = optimizer.update(grads, opt_state, lora_params)
        lora_params = jax.tree_util.tree_map(lambda p, u: p + u, lora_params, updates)
        return lora_params, opt_state, loss

    return step
