"""adapters.lora: init, exact merge and unmerge, and a step that trains only A and B."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapters import lora


def tiny_params(key):
    """Two blocks with attention projections named as in models.llama, and a norm."""
    keys = jax.random.split(key, 6)
    params = {}
    for layer in range(2):
        attn = {}
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            attn[name] = {"kernel": jax.random.normal(keys[3 * layer + index], (8, 8))}
        params[f"layers_{layer}"] = {"attn": attn, "input_norm": {"scale": jnp.ones(8)}}
    return params


def test_init_targets_only_named_projections():
    params = tiny_params(jax.random.key(0))
    factors = lora.init(jax.random.key(1), params, rank=2)
    assert set(factors) == {"layers_0", "layers_1"}
    assert set(factors["layers_0"]["attn"]) == {"q_proj", "v_proj"}
    assert factors["layers_1"]["attn"]["v_proj"]["A"].shape == (8, 2)
    assert factors["layers_1"]["attn"]["v_proj"]["B"].shape == (2, 8)
    assert lora.count(factors) == 4 * (8 * 2 + 2 * 8)


def test_merge_at_init_is_identity():
    params = tiny_params(jax.random.key(0))
    factors = lora.init(jax.random.key(1), params, rank=2)
    merged = lora.merge(params, factors, alpha=4.0, rank=2)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_merge_adds_scaled_product():
    params = tiny_params(jax.random.key(0))
    factors = lora.init(jax.random.key(1), params, rank=2)
    factors["layers_0"]["attn"]["q_proj"]["B"] = jnp.ones((2, 8))
    merged = lora.merge(params, factors, alpha=4.0, rank=2)
    a = np.asarray(factors["layers_0"]["attn"]["q_proj"]["A"], np.float64)
    expected = np.asarray(params["layers_0"]["attn"]["q_proj"]["kernel"]) + 2.0 * a @ np.ones((2, 8))
    np.testing.assert_allclose(merged["layers_0"]["attn"]["q_proj"]["kernel"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(merged["layers_0"]["attn"]["k_proj"]["kernel"],
                                  params["layers_0"]["attn"]["k_proj"]["kernel"])


def test_unmerge_inverts_merge_within_rounding():
    params = tiny_params(jax.random.key(0))
    factors = lora.init(jax.random.key(1), params, rank=3, targets=("q_proj", "k_proj", "v_proj"))
    factors = jax.tree_util.tree_map(lambda x: x + 0.37, factors)
    merged = lora.merge(params, factors, alpha=5.0, rank=3)
    restored = lora.unmerge(merged, factors, alpha=5.0, rank=3)
    eps = np.finfo(np.float32).eps
    for layer in ("layers_0", "layers_1"):
        for name in ("q_proj", "k_proj", "v_proj"):
            original = np.asarray(params[layer]["attn"][name]["kernel"])
            summed = np.asarray(merged[layer]["attn"][name]["kernel"])
            back = np.asarray(restored[layer]["attn"][name]["kernel"])
            # Two roundings, each at most half an ulp of its result.
            bound = eps * (np.abs(original) + np.abs(summed))
            assert np.all(np.abs(back - original) <= bound), (layer, name)
            assert not np.array_equal(summed, original)


@pytest.mark.parametrize("rank", [0, -2, 1.5])
def test_invalid_rank_raises(rank):
    params = tiny_params(jax.random.key(0))
    with pytest.raises(ValueError, match="rank="):
        lora.init(jax.random.key(1), params, rank=rank)
    with pytest.raises(ValueError, match="rank="):
        lora.merge(params, {}, alpha=1.0, rank=rank)


def test_unknown_targets_raise():
    with pytest.raises(ValueError, match="no kernel"):
        lora.init(jax.random.key(1), tiny_params(jax.random.key(0)), rank=2, targets=("wq",))


def test_train_step_updates_only_factors():
    params = tiny_params(jax.random.key(0))
    data_key, target_key, lora_key = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(data_key, (32, 8))
    target = x @ jax.random.normal(target_key, (8, 8))

    def loss_fn(p, batch):
        inputs, outputs = batch
        layer = p["layers_0"]["attn"]
        return jnp.mean((inputs @ layer["q_proj"]["kernel"] @ layer["v_proj"]["kernel"] - outputs) ** 2)

    factors = lora.init(lora_key, params, rank=4)
    optimizer = optax.adam(0.05)
    step = lora.make_train_step(loss_fn, optimizer, alpha=4.0, rank=4)
    opt_state = optimizer.init(factors)
    first = float(loss_fn(params, (x, target)))
    for _ in range(60):
        factors, opt_state, loss = step(factors, opt_state, params, (x, target))
    assert float(loss) < 0.5 * first
    assert step._cache_size() == 1
    merged = lora.merge(params, factors, alpha=4.0, rank=4)
    assert float(loss_fn(merged, (x, target))) < 0.5 * first
