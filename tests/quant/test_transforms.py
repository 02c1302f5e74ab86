"""Params-pytree quantization: policies, composition with JAX transforms, integer export."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MnistCNN, resnet20
from quant import quantizers
from quant import transforms
from quant.transforms import Policy, Rule, kernel_policy, quantize_params

RESNET_ENDS = ("stem", "classifier")
CNN_ENDS = ("conv0", "classifier")


@pytest.fixture(scope="module")
def resnet():
    model = resnet20()
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    return model, jax.jit(model.init)(jax.random.key(1), images), images


@pytest.fixture(scope="module")
def cnn():
    model = MnistCNN(widths=(8, 16), hidden=32)
    images = jax.random.normal(jax.random.key(2), (3, 28, 28, 1))
    return model, jax.jit(model.init)(jax.random.key(3), images), images


def leaves_by_path(tree):
    return {transforms.path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_kernel_policy_keeps_first_and_last_float(resnet):
    _, variables, _ = resnet
    params = variables["params"]
    decided = transforms.resolve(params, kernel_policy("binarize", 1, float_layers=RESNET_ENDS))
    assert decided["stem/kernel"].quantizer == "float"
    assert decided["classifier/kernel"].quantizer == "float"
    assert decided["classifier/bias"].quantizer == "float"
    assert decided["stage1_block0/conv1/kernel"].quantizer == "binarize"
    assert decided["stage1_block0/shortcut/kernel"].quantizer == "binarize"
    assert decided["stage0_block0/norm1/scale"] is None

    before = leaves_by_path(params)
    after = leaves_by_path(quantize_params(params, kernel_policy("binarize", 1, float_layers=RESNET_ENDS)))
    for path in ("stem/kernel", "classifier/kernel", "classifier/bias", "stage0_block0/norm1/scale"):
        np.testing.assert_array_equal(after[path], before[path])
    kernel = after["stage2_block1/conv2/kernel"]
    assert len(np.unique(np.abs(kernel))) == 1
    assert not np.array_equal(kernel, before["stage2_block1/conv2/kernel"])


def test_first_matching_rule_wins(cnn):
    _, variables, _ = cnn
    policy = Policy(rules=(
        Rule(pattern="conv1/kernel", quantizer="uniform_symmetric", bits=2),
        Rule(pattern="*/kernel", quantizer="binarize"),
    ))
    decided = transforms.resolve(variables["params"], policy)
    assert decided["conv1/kernel"].quantizer == "uniform_symmetric"
    assert decided["conv0/kernel"].quantizer == "binarize"
    assert decided["conv0/bias"] is None


def test_quantize_params_keeps_structure_under_jit(cnn):
    _, variables, _ = cnn
    params = variables["params"]
    policy = kernel_policy("dorefa", 3, float_layers=CNN_ENDS)
    eager = quantize_params(params, policy)
    jitted = jax.jit(lambda p: quantize_params(p, policy))(params)
    assert jax.tree_util.tree_structure(eager) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_array_equal(a, b)


def test_quantize_params_composes_with_vmap(cnn):
    _, variables, _ = cnn
    params = variables["params"]
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, doubled)
    policy = kernel_policy("binarize", 1, float_layers=CNN_ENDS, channel_axis=-1)
    batched = jax.vmap(lambda p: quantize_params(p, policy))(stacked)
    for index, single in enumerate((params, doubled)):
        expected = quantize_params(single, policy)
        member = jax.tree_util.tree_map(lambda x, i=index: x[i], batched)
        for a, b in zip(jax.tree_util.tree_leaves(member), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)


def test_scaling_commutes_with_uniform_quantization(cnn):
    # Doubling is exact in float32 and doubles the max-abs scale, so the codes do not move.
    _, variables, _ = cnn
    params = variables["params"]
    policy = kernel_policy("uniform_symmetric", 4, float_layers=CNN_ENDS, channel_axis=-1)
    double = lambda tree: jax.tree_util.tree_map(lambda x: 2 * x, tree)  # noqa: E731
    left = quantize_params(double(params), policy)
    right = double(quantize_params(params, policy))
    for a, b in zip(jax.tree_util.tree_leaves(left), jax.tree_util.tree_leaves(right)):
        np.testing.assert_array_equal(a, b)


def test_gradient_passes_straight_through(cnn):
    _, variables, _ = cnn
    params = variables["params"]
    policy = kernel_policy("uniform_symmetric", 3, float_layers=CNN_ENDS)
    weights = jax.tree_util.tree_map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape), params)

    def loss(p):
        quantized = quantize_params(p, policy)
        products = jax.tree_util.tree_map(lambda q, c: jnp.sum(q * c), quantized, weights)
        return sum(jax.tree_util.tree_leaves(products))

    grads = jax.grad(loss)(params)
    for g, c in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(weights)):
        np.testing.assert_array_equal(g, c)


def test_binarized_kernels_learn(cnn):
    """SGD on the binarized kernels alone, through the straight-through gradient, fits a batch."""
    model, variables, images = cnn
    labels = jnp.array([1, 4, 7])
    policy = kernel_policy("binarize", 1, float_layers=CNN_ENDS, channel_axis=-1)
    params = variables["params"]

    def loss(kernels):
        trained = {**params, "conv1": {**params["conv1"], "kernel": kernels[0]},
                   "hidden": {**params["hidden"], "kernel": kernels[1]}}
        logits = model.apply({"params": quantize_params(trained, policy),
                              "batch_stats": variables["batch_stats"]}, images)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(3), labels])

    kernels = (params["conv1"]["kernel"], params["hidden"]["kernel"])
    step = jax.jit(lambda k: jax.tree_util.tree_map(lambda w, g: w - 0.02 * g, k, jax.grad(loss)(k)))
    first = loss(kernels)
    for _ in range(10):
        kernels = step(kernels)
    assert loss(kernels) < 0.5 * first


def test_pattern_matching_no_path_is_rejected(resnet):
    _, variables, _ = resnet
    params = variables["params"]
    with pytest.raises(ValueError, match=r"policy pattern 'head/\*' matches no parameter path; the paths are: "):
        quantize_params(params, kernel_policy("binarize", 1, float_layers=("stem", "head")))
    with pytest.raises(ValueError, match=r"policy pattern 'encoder/\*/kernel' matches no parameter path"):
        transforms.export(params, Policy(rules=(Rule(pattern="encoder/*/kernel", quantizer="dorefa", bits=2),)))


@pytest.mark.parametrize(
    "quantizer, bits, message",
    [
        ("dorefa", 0, r"bits of the dorefa rule for '\*/kernel'=0 is not a valid bit width: it must be an integer in 1\.\.16"),
        ("dorefa", 17, r"=17 is not a valid bit width: it must be an integer in 1\.\.16"),
        ("dorefa", 2.0, r"=2\.0 is not a valid bit width"),
        ("dorefa", True, r"=True is not a valid bit width"),
        ("dorefa", None, r"=None is not a valid bit width"),
        ("uniform_symmetric", 1, r"=1 is not a valid bit width: it must be an integer in 2\.\.16"),
        ("lsq", 17, r"=17 is not a valid bit width: it must be an integer in 2\.\.16"),
        ("binarize", 2, r"binarize quantizes to 1 bit; the rule for '\*/kernel' has bits=2"),
        ("ternary", 2, r"unknown quantizer 'ternary' in the rule for '\*/kernel'; valid quantizers are "
                       r"\('float', 'binarize', 'dorefa', 'uniform_symmetric', 'lsq'\)"),
    ],
)
def test_invalid_rule_is_rejected(quantizer, bits, message):
    with pytest.raises(ValueError, match=message):
        kernel_policy(quantizer, bits, float_layers=RESNET_ENDS)


def test_inconsistent_rule_fields_are_rejected():
    with pytest.raises(ValueError, match=r"float rule for 'stem/\*' takes no bits"):
        Rule(pattern="stem/*", quantizer="float", bits=8)
    with pytest.raises(ValueError, match=r"must have channel_axis=None, got -1"):
        Rule(pattern="*/kernel", quantizer="dorefa", bits=2, channel_axis=-1)
    with pytest.raises(ValueError, match=r"pattern='' must be a non-empty string"):
        Rule(pattern="", quantizer="binarize")
    with pytest.raises(ValueError, match=r"float_layers='stem' must be a sequence"):
        kernel_policy("binarize", 1, float_layers="stem")


def test_integer_parameter_is_rejected():
    params = {"layer": {"kernel": jnp.ones((2, 2), jnp.int32)}}
    with pytest.raises(ValueError, match=r"parameter 'layer/kernel' has dtype int32"):
        quantize_params(params, Policy(rules=(Rule(pattern="*/kernel", quantizer="binarize"),)))


def test_lsq_steps_are_required_and_trainable(cnn):
    _, variables, _ = cnn
    params = variables["params"]
    policy = kernel_policy("lsq", 4, float_layers=CNN_ENDS, channel_axis=-1)
    with pytest.raises(ValueError, match=r"parameter 'conv1/kernel' uses LSQ .* init_lsq_steps"):
        quantize_params(params, policy)
    steps = transforms.init_lsq_steps(params, policy)
    assert sorted(steps) == ["conv1/kernel", "hidden/kernel"]
    assert steps["conv1/kernel"].shape == (1, 1, 1, 16)
    kernel = np.asarray(params["conv1"]["kernel"])
    np.testing.assert_allclose(
        steps["conv1/kernel"].ravel(), 2 * np.abs(kernel).mean(axis=(0, 1, 2)) / np.sqrt(7), rtol=1e-6
    )

    def loss(steps):
        quantized = quantize_params(params, policy, lsq_steps=steps)
        return jnp.sum(quantized["conv1"]["kernel"] ** 2)

    grads = jax.grad(loss)(steps)
    assert np.all(np.abs(grads["conv1/kernel"]) > 0)


def test_quantized_activation():
    assert transforms.quantized_activation(None) is nn.relu
    x = jnp.array([-1.0, 0.2, 0.5, 0.9, 3.0])
    np.testing.assert_array_equal(transforms.quantized_activation(2)(x), quantizers.dorefa_activations(x, 2))
    with pytest.raises(ValueError, match=r"activation bits=0 is not a valid bit width"):
        transforms.quantized_activation(0)


def test_quantized_activation_in_model(cnn):
    model, variables, images = cnn
    quantize = transforms.quantized_activation(1)
    outputs = []

    def recording_activation(x):
        outputs.append(quantize(x))
        return outputs[-1]

    quantized_model = MnistCNN(widths=(8, 16), hidden=32, activation=recording_activation)
    logits = quantized_model.apply(variables, images)
    assert len(outputs) == 3
    for output in outputs:
        assert set(np.unique(np.asarray(output))) <= {0.0, 1.0}
    assert not np.array_equal(logits, model.apply(variables, images))


# Every policy runs on the small CNN; ResNet-20, slower to compile, runs one of each kind.
EXPORT_CASES = [
    pytest.param("cnn", ("binarize", 1, -1), id="cnn-binarize-per-channel"),
    pytest.param("cnn", ("binarize", 1, None), id="cnn-binarize-per-tensor"),
    pytest.param("cnn", ("dorefa", 1, None), id="cnn-dorefa-1"),
    pytest.param("cnn", ("dorefa", 2, None), id="cnn-dorefa-2"),
    pytest.param("cnn", ("dorefa", 8, None), id="cnn-dorefa-8"),
    pytest.param("cnn", ("uniform_symmetric", 4, -1), id="cnn-uniform-4-per-channel"),
    pytest.param("cnn", ("uniform_symmetric", 8, None), id="cnn-uniform-8"),
    pytest.param("cnn", ("lsq", 3, -1), id="cnn-lsq-3-per-channel"),
    pytest.param("resnet", ("binarize", 1, None), id="resnet-binarize-per-tensor"),
    pytest.param("resnet", ("dorefa", 2, None), id="resnet-dorefa-2"),
    pytest.param("resnet", ("uniform_symmetric", 4, -1), id="resnet-uniform-4-per-channel"),
    pytest.param("resnet", ("lsq", 3, -1), id="resnet-lsq-3-per-channel"),
]


@pytest.mark.parametrize("network, spec", EXPORT_CASES)
def test_export_matches_fake_quant_bitwise(network, spec, request):
    model, variables, images = request.getfixturevalue(network)
    quantizer, bits, channel_axis = spec
    ends = CNN_ENDS if network == "cnn" else RESNET_ENDS
    policy = kernel_policy(quantizer, bits, float_layers=ends, channel_axis=channel_axis)
    params = variables["params"]
    steps = transforms.init_lsq_steps(params, policy)
    stats = variables["batch_stats"]

    @jax.jit
    def fake_quant_logits(params, steps):
        return model.apply({"params": quantize_params(params, policy, lsq_steps=steps), "batch_stats": stats}, images)

    @jax.jit
    def exported_logits(exported):
        return model.apply({"params": transforms.dequantize(exported), "batch_stats": stats}, images)

    exported = transforms.export(params, policy, lsq_steps=steps)
    np.testing.assert_array_equal(exported_logits(exported), fake_quant_logits(params, steps))
    if network == "cnn":  # op-by-op ResNet-20 is slow, and the quantization is the same code
        # Op by op on both sides: a jitted network may fuse its float32 sums in another
        # order than the same network run eagerly, which moves the last bits on some CPUs.
        eager_fake = model.apply({"params": quantize_params(params, policy, lsq_steps=steps), "batch_stats": stats},
                                 images)
        eager_export = model.apply({"params": transforms.dequantize(exported), "batch_stats": stats}, images)
        np.testing.assert_array_equal(eager_export, eager_fake)


@pytest.mark.parametrize(
    "quantizer, bits, dtype",
    [("dorefa", 2, "int8"), ("dorefa", 7, "int8"), ("dorefa", 8, "int16"), ("dorefa", 16, "int32"),
     ("uniform_symmetric", 8, "int8"), ("uniform_symmetric", 16, "int16"), ("lsq", 8, "int8"),
     ("lsq", 9, "int16"), ("binarize", 1, "uint8")],
)
def test_export_code_dtypes(quantizer, bits, dtype, cnn):
    _, variables, _ = cnn
    params = variables["params"]
    policy = kernel_policy(quantizer, bits, float_layers=CNN_ENDS)
    exported = transforms.export(params, policy, lsq_steps=transforms.init_lsq_steps(params, policy))
    kernel = exported["conv1"]["kernel"]
    assert isinstance(kernel, transforms.QuantizedArray)
    assert kernel.codes.dtype == np.dtype(dtype)
    assert kernel.shape == (3, 3, 8, 16)
    assert isinstance(exported["conv0"]["kernel"], jax.Array)  # the first layer stays float


def test_packed_binary_export_size(resnet):
    _, variables, _ = resnet
    params = variables["params"]
    exported = transforms.export(params, kernel_policy("binarize", 1, float_layers=RESNET_ENDS, channel_axis=-1))
    kernel = exported["stage0_block0"]["conv1"]["kernel"]
    assert kernel.packed
    assert kernel.codes.shape == (3 * 3 * 16 * 16 // 8,)
    assert kernel.scale.shape == (1, 1, 1, 16)
    assert kernel.nbytes == 288 + 16 * 4
    quantized_floats = sum(
        np.asarray(v).nbytes for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
        if transforms.path_name(p).endswith("kernel") and not transforms.path_name(p).startswith(RESNET_ENDS)
    )
    saved = transforms.storage_bytes(params) - transforms.storage_bytes(exported)
    # Packing keeps 1 bit of every 32, plus one float32 scale per output channel.
    assert quantized_floats * (1 - 1 / 32) * 0.99 < saved < quantized_floats * (1 - 1 / 32)


def test_exported_inference_receives_integer_weights(cnn):
    model, variables, images = cnn
    params = variables["params"]
    apply = jax.jit(lambda exported: model.apply(
        {"params": transforms.dequantize(exported), "batch_stats": variables["batch_stats"]}, images))
    packed = transforms.export(params, kernel_policy("binarize", 1, float_layers=CNN_ENDS))
    assert "tensor<144xui8>" in apply.lower(packed).as_text()  # conv1 kernel: 3*3*8*16 bits
    integers = transforms.export(params, kernel_policy("uniform_symmetric", 8, float_layers=CNN_ENDS))
    assert "tensor<3x3x8x16xi8>" in apply.lower(integers).as_text()
