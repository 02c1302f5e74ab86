"""Approximate contractions against slow loops of scalar products summed in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import approx
from approx import dot

EPS32 = 2.0**-24  # unit roundoff of float32


def loop_matmul(a, b, multiply):
    """[M, K] x [K, N] by scalar products accumulated left to right in float32."""
    products = np.asarray(multiply(a[:, :, None], b[None, :, :]), np.float32)  # [M, K, N]
    out = np.full((a.shape[0], b.shape[1]), -0.0, np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf in the special-value test
        for k in range(a.shape[1]):
            out = (out + products[:, k, :]).astype(np.float32)
    return out, products


def assert_within_summation_error(actual, expected, products):
    """Two float32 sums of the same products differ by at most 2 K u sum|p|."""
    k = products.shape[1]
    bound = 2 * k * EPS32 * np.abs(products.astype(np.float64)).sum(axis=1)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    assert (np.abs(actual[finite].astype(np.float64) - expected[finite]) <= bound[finite]).all()


MULTIPLIERS = [
    approx.get_multiplier("exact"),
    approx.get_multiplier("bf16", mode="nearest"),
    approx.get_multiplier("bf16", mode="truncate"),
    approx.get_multiplier("mitchell", w=23),
    approx.get_multiplier("mitchell", w=6),
    approx.get_multiplier("mitchell", w=4, unbiased=True),
    approx.get_multiplier("truncated", w=8),
    approx.get_multiplier("drum", k=6),
    approx.get_multiplier("ilm", iterations=1),
]


@pytest.mark.parametrize("multiplier", MULTIPLIERS, ids=lambda m: m.label)
def test_matmul_matches_scalar_loop(multiplier):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((13, 37)).astype(np.float32)
    b = rng.standard_normal((37, 11)).astype(np.float32)
    a[a < -1.2] = 0  # zeros, as after a ReLU
    expected, products = loop_matmul(a, b, multiplier)
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    assert_within_summation_error(actual, expected, products)


def grouped_loop_matmul(a, b, multiply, group):
    """[M, K] x [K, N] summed as the emulation documents: groups of `group` products summed
    left to right, each group added to the running total, all in float32."""
    products = np.asarray(multiply(a[:, :, None], b[None, :, :]), np.float32)
    out = np.full((a.shape[0], b.shape[1]), -0.0, np.float32)
    for start in range(0, a.shape[1], group):
        partial = products[:, start, :]
        for k in range(start + 1, min(start + group, a.shape[1])):
            partial = (partial + products[:, k, :]).astype(np.float32)
        out = (out + partial).astype(np.float32)
    return out


@pytest.mark.parametrize("multiplier", [m for m in MULTIPLIERS if m.kind != "native"], ids=lambda m: m.label)
def test_matmul_is_bit_exact_in_documented_order(multiplier):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((7, 29)).astype(np.float32)  # 29 = three full steps and a remainder
    b = rng.standard_normal((29, 6)).astype(np.float32)
    expected = grouped_loop_matmul(a, b, multiplier, dot.UNROLL)
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("chunk_elements", [1, 7, 100, 5000, 1 << 21])
def test_chunking_does_not_change_results(chunk_elements):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 23)).astype(np.float32)
    b = rng.standard_normal((23, 5)).astype(np.float32)
    multiplier = approx.get_multiplier("mitchell", w=6)
    expected = np.asarray(approx.matmul(a, b, multiplier=multiplier, chunk_elements=1 << 21))
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier, chunk_elements=chunk_elements))
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def test_one_term_contraction_is_bit_exact():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 1)).astype(np.float32)
    b = rng.standard_normal((1, 4)).astype(np.float32)
    actual = np.asarray(approx.matmul(a, b, multiplier="mitchell"))
    np.testing.assert_array_equal(actual, np.asarray(approx.mitchell_mul(a, b)))


def test_special_values_follow_the_float32_sum():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal((8, 5)).astype(np.float32)
    a[0, 1], a[1, 2], a[2, 3], a[3, 0] = np.inf, -np.inf, np.nan, 0.0
    b[0, 0], b[3, 2], b[5, 4] = np.inf, -np.inf, 1e-40
    a[4, 5] = 3e38
    b[5, 1] = 3e38  # overflows to inf inside the sum
    multiplier = approx.get_multiplier("mitchell", w=8)
    expected, products = loop_matmul(a, b, multiplier)
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    assert np.isnan(expected).any() and np.isinf(expected).any()
    assert_within_summation_error(actual, expected, np.nan_to_num(products, posinf=0, neginf=0))


def test_dot_general_batch_and_layout():
    rng = np.random.default_rng(4)
    lhs = rng.standard_normal((3, 5, 4, 2)).astype(np.float32)  # batch 3, contract 5 and 2
    rhs = rng.standard_normal((2, 6, 3, 5)).astype(np.float32)  # contract 2 and 5, batch 3
    dims = (((1, 3), (3, 0)), ((0,), (2,)))
    expected = lax.dot_general(lhs, rhs, dims, precision=lax.Precision.HIGHEST)
    actual = approx.dot_general(lhs, rhs, dims, multiplier="exact")
    assert actual.shape == expected.shape == (3, 4, 6)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

    mitchell = approx.get_multiplier("mitchell", w=6)
    actual = np.asarray(approx.dot_general(lhs, rhs, dims, multiplier=mitchell))
    products = approx.mitchell_mul(
        lhs.transpose(0, 2, 1, 3)[:, :, None], rhs.transpose(2, 1, 3, 0)[:, None], w=6
    )  # [3, 4, 6, 5, 2]
    expected = np.asarray(products, np.float64).sum(axis=(3, 4))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_function_multiplier_uses_elementwise_path():
    def halve(a, b):
        return a * b * 0.5

    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((6, 3)).astype(np.float32)
    actual = approx.matmul(a, b, multiplier=halve)
    np.testing.assert_allclose(actual, 0.5 * (a @ b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (0, 1))])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1)])
def test_conv_exact_matches_lax(layout, padding, strides):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    k = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    dims = None
    if layout == "NHWC":
        x, k, dims = x.transpose(0, 2, 3, 1), k.transpose(2, 3, 1, 0), ("NHWC", "HWIO", "NHWC")
    expected = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dims,
                                        precision=lax.Precision.HIGHEST)
    for multiplier in ("exact", approx.as_multiplier(lambda a, b: a * b)):
        actual = approx.conv_general_dilated(x, k, strides, padding, dimension_numbers=dims,
                                             multiplier=multiplier)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_conv_mitchell_equals_dot_of_patches():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    dims = ("NHWC", "HWIO", "NHWC")
    multiplier = approx.get_multiplier("mitchell", w=6)
    actual = np.asarray(approx.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=dims,
                                                    multiplier=multiplier))
    patches, kernel = dot.conv_operands(x, k, (2, 2), "SAME", dimension_numbers=dims)
    expected, products = loop_matmul(np.asarray(patches), np.asarray(kernel), multiplier)
    assert_within_summation_error(actual.reshape(-1, 4), expected, products)


def test_dot_general_does_not_recompile_for_equal_multipliers():
    a = jnp.ones((4, 5))
    b = jnp.ones((5, 3))
    approx.matmul(a, b, multiplier=approx.get_multiplier("mitchell", w=5))
    before = dot._dot_general._cache_size()
    approx.matmul(a, b, multiplier=approx.get_multiplier("mitchell", w=5))
    approx.matmul(a + 1, b, multiplier=approx.get_multiplier("mitchell", w=5))
    assert before >= 1
    assert dot._dot_general._cache_size() == before


def test_dot_general_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in size"):
        approx.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))


def test_grouped_convolution_is_rejected():
    with pytest.raises(NotImplementedError, match="feature_group_count"):
        approx.conv_general_dilated(np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3)), (1, 1), "SAME",
                                    feature_group_count=2, multiplier="mitchell")


def test_unknown_multiplier_name_is_rejected():
    with pytest.raises(ValueError, match="unknown multiplier 'mitchel'"):
        approx.get_multiplier("mitchel")
    with pytest.raises(ValueError, match="invalid parameters"):
        approx.get_multiplier("mitchell", width=6)
    with pytest.raises(ValueError, match="w=30"):
        approx.get_multiplier("mitchell", w=30)


def test_dot_general_under_jit_and_vmap():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((5, 2)).astype(np.float32)
    multiplier = approx.get_multiplier("mitchell", w=6)
    batched = jax.jit(jax.vmap(lambda x: approx.matmul(x, b, multiplier=multiplier)))(a)
    direct = approx.matmul(a, b, multiplier=multiplier)
    np.testing.assert_allclose(batched, direct, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["tiny operands", "overflowing operands", "zeros and subnormals", "infinity"],
)
def test_general_and_fast_kernels_agree_with_loop(case):
    rng = np.random.default_rng(10)
    a = rng.standard_normal((6, 19)).astype(np.float32)
    b = rng.standard_normal((19, 5)).astype(np.float32)
    if case == "tiny operands":  # 2**-100 * 2**-100 rules the fast kernel out
        a[0, :4] *= np.float32(2.0**-100)
        b[:4, 0] *= np.float32(2.0**-100)
    elif case == "overflowing operands":
        a[1, 2] = 3e38
        b[2, 3] = 4.0
    elif case == "zeros and subnormals":  # the fast kernel applies
        a[a < -0.8] = 0
        b[0, :] = 1e-40
        b[1, :] = -0.0
    else:
        a[2, 5] = np.inf
    multiplier = approx.get_multiplier("mitchell", w=5, unbiased=True)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = grouped_loop_matmul(a, b, multiplier, dot.UNROLL)
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    np.testing.assert_array_equal(actual[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_fast_path_condition():
    w, offset = 6, 0
    ones = np.ones((3, 3), np.float32)
    extremes = dot._normal_log_extremes(ones, w)
    assert bool(dot.fast_path_applies(extremes, extremes, offset, True))
    huge = dot._normal_log_extremes(ones * np.float32(2.0**70), w)
    assert not bool(dot.fast_path_applies(huge, huge, offset, True))
    tiny = dot._normal_log_extremes(ones * np.float32(2.0**-70), w)
    assert not bool(dot.fast_path_applies(tiny, tiny, offset, True))
    assert not bool(dot.fast_path_applies(extremes, extremes, offset, False))


def rounded_loop_matmul(a, b, multiply, round_sum):
    """Grouped float32 loop in which every sum is rounded by `round_sum`."""
    products = np.asarray(multiply(a[:, :, None], b[None, :, :]), np.float32)
    out = np.full((a.shape[0], b.shape[1]), -0.0, np.float32)
    for start in range(0, a.shape[1], dot.UNROLL):
        partial = products[:, start, :]
        for k in range(start + 1, min(start + dot.UNROLL, a.shape[1])):
            partial = round_sum(partial + products[:, k, :])
        out = round_sum(out + partial)
    return out


@pytest.mark.parametrize("accumulation", ["bf16", "trunc10"])
@pytest.mark.parametrize("name", ["exact", "mitchell"])
def test_approximate_accumulation_rounds_every_sum(accumulation, name):
    rng = np.random.default_rng(11)
    a = rng.standard_normal((5, 21)).astype(np.float32)
    b = rng.standard_normal((21, 4)).astype(np.float32)
    multiplier = approx.get_multiplier(name)
    if accumulation == "bf16":
        def round_sum(x):
            return np.asarray(approx.bf16_round(x))
    else:
        def round_sum(x):
            return np.asarray(approx.truncate_significand(x, w=10))
    expected = rounded_loop_matmul(a, b, multiplier, round_sum)
    actual = np.asarray(approx.matmul(a, b, multiplier=multiplier, accumulation=accumulation))
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))
    exact_sum = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    assert not np.array_equal(actual, exact_sum)


@pytest.mark.parametrize("accumulation", ["fp16", "trunc0", "trunc23", "truncx", None])
def test_invalid_accumulation_is_rejected(accumulation):
    with pytest.raises(ValueError, match="accumulation="):
        approx.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), accumulation=accumulation)


@pytest.mark.parametrize("shape", [(5, 13, 3), (70, 130, 66), (1, 8, 1)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_pallas_kernel_matches_xla_bit_for_bit(shape, unbiased):
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    a[a < -1.0] = 0.0
    b[b > 1.5] = -0.0
    multiplier = approx.get_multiplier("mitchell", w=6, unbiased=unbiased)
    xla = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    pallas = np.asarray(approx.matmul(a, b, multiplier=multiplier, implementation="pallas"))
    np.testing.assert_array_equal(pallas.view(np.uint32), xla.view(np.uint32))


def test_pallas_kernel_keeps_negative_zero_sums():
    a = -np.ones((2, 3), np.float32) * 0.0
    b = np.ones((3, 2), np.float32)
    multiplier = approx.get_multiplier("mitchell", w=6)
    pallas = np.asarray(approx.matmul(a, b, multiplier=multiplier, implementation="pallas"))
    xla = np.asarray(approx.matmul(a, b, multiplier=multiplier))
    np.testing.assert_array_equal(pallas.view(np.uint32), xla.view(np.uint32))
    assert np.signbit(xla).all()


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="implementation='cuda'"):
        approx.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), implementation="cuda")
