"""Tests for dsa_tf.allocation.keep_process: expectation condition, implicit gradient, masks.

Reference values are computed independently in numpy: a 200-step numpy bisection for log(beta1),
central finite differences for dp/da, stable numpy sorting for the hard mask.
"""

import numpy as np
import pytest
import tensorflow as tf

from dsa_tf.allocation.keep_process import (
    hard_mask,
    keep_probabilities,
    kept_count,
    sample_mask,
    solve_log_beta1,
)

KEEP_RATIOS = (0.05, 0.3, 0.5, 0.9, 0.99)
BETA2S = (0.05, 0.5, 5.0, 50.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20200402)


def numpy_sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def numpy_keep_probabilities(importance: np.ndarray, keep_ratio: float, beta2: float) -> np.ndarray:
    """Independent float64 solution of mean(sigmoid(beta2 (log b - l))) == a by bisection."""
    x = np.log(importance)
    lo, hi = x.min() - 800.0 / beta2, x.max() + 800.0 / beta2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.mean(numpy_sigmoid(beta2 * (x - mid))) > keep_ratio:
            lo = mid
        else:
            hi = mid
    return numpy_sigmoid(beta2 * (x - 0.5 * (lo + hi)))


def probabilities_and_jacobian(
    importance: np.ndarray, keep_ratio: float, beta2: float, dtype: tf.DType = tf.float64
) -> tuple[np.ndarray, np.ndarray]:
    a = tf.Variable(keep_ratio, dtype=dtype)
    with tf.GradientTape() as tape:
        p = keep_probabilities(tf.constant(importance, dtype), a, beta2)
    return p.numpy(), tape.jacobian(p, a).numpy()


@pytest.mark.parametrize("dtype, tolerance", [(tf.float32, 1e-4), (tf.float64, 1e-8)])
def test_mean_probability_equals_keep_ratio(rng, dtype, tolerance):
    for channels in (4, 16, 64, 512):
        for keep_ratio in KEEP_RATIOS:
            for beta2 in BETA2S:
                importance = tf.constant(rng.lognormal(0.0, 1.0, channels), dtype)
                p = keep_probabilities(importance, keep_ratio, beta2)
                assert p.dtype == dtype and p.shape == (channels,)
                target = tf.constant(keep_ratio, dtype).numpy()
                assert abs(tf.reduce_mean(p).numpy() - target) < tolerance


def test_probabilities_match_independent_solver(rng):
    for beta2 in BETA2S + (1e4,):
        importance = rng.lognormal(0.0, 1.0, 32)
        p = keep_probabilities(tf.constant(importance), 0.4, beta2).numpy()
        np.testing.assert_allclose(p, numpy_keep_probabilities(importance, 0.4, beta2), atol=1e-9)


def test_solve_log_beta1_reaches_target_and_is_detached(rng):
    x = tf.Variable(rng.normal(size=10))
    beta2 = tf.Variable(3.0, dtype=tf.float64)
    keep_ratio = tf.Variable(0.3, dtype=tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        log_beta1 = solve_log_beta1(x, keep_ratio, beta2)
    mean_p = tf.reduce_mean(tf.sigmoid(beta2 * (x - log_beta1)))
    assert abs(mean_p.numpy() - 0.3) < 1e-10
    for source in (x, beta2, keep_ratio):
        assert tape.gradient(log_beta1, source) is None


@pytest.mark.parametrize("beta2", BETA2S)
@pytest.mark.parametrize("channels", [4, 16, 64])
def test_gradient_matches_finite_differences(rng, channels, beta2):
    importance = rng.lognormal(0.0, 1.0, channels)
    keep_ratio, step = 0.37, 1e-6
    _, jacobian = probabilities_and_jacobian(importance, keep_ratio, beta2)
    finite_difference = (
        numpy_keep_probabilities(importance, keep_ratio + step, beta2)
        - numpy_keep_probabilities(importance, keep_ratio - step, beta2)
    ) / (2.0 * step)
    error = np.linalg.norm(jacobian - finite_difference) / np.linalg.norm(finite_difference)
    assert error < 1e-5
    assert np.all(jacobian >= 0.0)  # a larger keep ratio never lowers a keep probability
    assert abs(jacobian.mean() - 1.0) < 1e-10  # d mean(p) / da == 1


def test_gradient_is_implicit_formula(rng):
    """dp_i/da == C p_i (1 - p_i) / sum_j p_j (1 - p_j), evaluated on the numpy solution."""
    importance = rng.lognormal(0.0, 1.0, 16)
    _, jacobian = probabilities_and_jacobian(importance, 0.6, 2.0)
    p = numpy_keep_probabilities(importance, 0.6, 2.0)
    expected = 16 * p * (1 - p) / np.sum(p * (1 - p))
    np.testing.assert_allclose(jacobian, expected, rtol=1e-7)


def test_no_gradient_into_importance_or_beta2(rng):
    """Importance and beta2 are detached: tape.gradient returns None for them."""
    importance = tf.Variable(rng.lognormal(0.0, 1.0, 8))
    beta2 = tf.Variable(5.0, dtype=tf.float64)
    keep_ratio = tf.Variable(0.5, dtype=tf.float64)
    weights = tf.constant(rng.normal(size=8))
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(weights * keep_probabilities(importance, keep_ratio, beta2))
    assert tape.gradient(loss, importance) is None
    assert tape.gradient(loss, beta2) is None
    assert tape.gradient(loss, keep_ratio) is not None


def test_keep_ratio_of_another_dtype_gets_gradient(rng):
    keep_ratio = tf.Variable(0.5, dtype=tf.float32)
    with tf.GradientTape() as tape:
        mean_p = tf.reduce_mean(
            keep_probabilities(tf.constant(rng.lognormal(size=8)), keep_ratio, 1.0)
        )
    assert mean_p.dtype == tf.float64
    assert abs(tape.gradient(mean_p, keep_ratio).numpy() - 1.0) < 1e-6


def test_floor_adds_and_clips(rng):
    importance = tf.constant(rng.lognormal(0.0, 1.0, 16))
    plain = numpy_keep_probabilities(importance.numpy(), 0.5, 50.0)
    floored = keep_probabilities(importance, 0.5, 50.0, floor=0.01).numpy()
    np.testing.assert_allclose(floored, np.clip(plain + 0.01, 0.0, 1.0), atol=1e-9)
    assert floored.min() >= 0.01 and floored.max() <= 1.0


def test_single_channel_probability_is_keep_ratio():
    p, jacobian = probabilities_and_jacobian(np.array([0.3]), 0.42, 5.0)
    assert abs(p[0] - 0.42) < 1e-10
    assert abs(jacobian[0] - 1.0) < 1e-10


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("beta2", [0.05, 5.0, 50.0, 1e4])
def test_equal_importances_give_keep_ratio_everywhere(dtype, beta2):
    """By symmetry p_i == a and dp_i/da == 1 for every channel.

    float32 tolerance: the bisection resolves log(beta1) to one ulp (~2**-24 here), which moves p
    by up to beta2 / 4 * ulp.
    """
    tolerance = 1e-10 if dtype == tf.float64 else 1e-6 + beta2 * 2.0**-23
    p, jacobian = probabilities_and_jacobian(np.full(8, 0.7), 0.3, beta2, dtype)
    target = tf.constant(0.3, dtype).numpy()
    np.testing.assert_allclose(p, target, atol=tolerance, rtol=0)
    np.testing.assert_allclose(jacobian, 1.0, atol=1e-5 if dtype == tf.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_large_beta2_is_finite(rng, dtype):
    for keep_ratio in KEEP_RATIOS:
        importance = rng.lognormal(0.0, 1.0, 64)
        p, jacobian = probabilities_and_jacobian(importance, keep_ratio, 1e4, dtype)
        assert np.all(np.isfinite(p)) and np.all(np.isfinite(jacobian))
        assert abs(p.mean() - keep_ratio) < 1e-3
        # Hard thresholding: the gradient is either the implicit one (mean 1) or the 0 fallback.
        assert abs(jacobian.mean() - 1.0) < 1e-4 or np.all(jacobian == 0.0)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_saturated_keep_ratios_are_finite(rng, dtype):
    """a == 1 (sigmoid(Theta) rounds to 1) keeps everything with zero gradient; a == 0 is finite."""
    importance = rng.lognormal(0.0, 1.0, 16)
    p, jacobian = probabilities_and_jacobian(importance, 1.0, 5.0, dtype)
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(jacobian, 0.0)
    p, jacobian = probabilities_and_jacobian(importance, 0.0, 5.0, dtype)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(jacobian))
    assert p.max() < 1e-6


def test_rejects_unsupported_dtype():
    with pytest.raises(TypeError):
        keep_probabilities(tf.constant([1.0, 2.0], tf.float16), 0.5, 1.0)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_sample_mask_forward_and_straight_through(rng, dtype):
    p = tf.constant(rng.uniform(size=256), dtype)
    u = tf.random.stateless_uniform([256], seed=[3, 7], dtype=dtype)
    weights = tf.constant(rng.normal(size=256), dtype)
    with tf.GradientTape() as tape:
        tape.watch(p)
        mask = sample_mask(p, u)
        loss = tf.reduce_sum(weights * mask)
    assert mask.dtype == dtype
    np.testing.assert_array_equal(mask.numpy(), (u.numpy() < p.numpy()).astype(float))
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    np.testing.assert_array_equal(tape.gradient(loss, p).numpy(), weights.numpy())


def test_kept_count_formula():
    for channels in (1, 3, 10, 16, 64):
        for keep_ratio in (0.0, 0.01, 0.05, 0.25, 0.3, 0.5, 0.75, 0.99, 1.0):
            for min_channels in (1, 2, 5, 100):
                expected = int(
                    np.clip(max(min_channels, np.round(keep_ratio * channels)), 1, channels)
                )
                k = kept_count(keep_ratio, channels, min_channels)
                assert k.dtype == tf.int32
                assert int(k) == expected
    assert int(kept_count(0.25, 10)) == 2  # 2.5 rounds half to even


def test_kept_count_rounds_down_to_multiples_or_keeps_all():
    for round_to in (4, 8, 16):
        for channels in (3, 10, 16, 20, 64):
            for keep_ratio in (0.0, 0.05, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0):
                for min_channels in (1, 5, 100):
                    unrounded = int(kept_count(keep_ratio, channels, min_channels))
                    allowed = {m for m in range(round_to, channels + 1, round_to)
                               if m >= min_channels} | {channels}
                    below = [m for m in allowed if m <= unrounded]
                    expected = max(below) if below else min(allowed)
                    assert int(kept_count(keep_ratio, channels, min_channels, round_to)) \
                        == expected, (round_to, channels, keep_ratio, min_channels)
    assert hard_mask(tf.range(20.0), 0.6, round_to=8).numpy().sum() == 8


def test_hard_mask_keeps_top_k(rng):
    for channels in (1, 5, 16, 64):
        for keep_ratio in (0.05, 0.3, 0.5, 0.9):
            for min_channels in (1, 4):
                importance = rng.lognormal(0.0, 1.0, channels)
                mask = hard_mask(tf.constant(importance, tf.float32), keep_ratio, min_channels)
                k = int(np.clip(max(min_channels, np.round(keep_ratio * channels)), 1, channels))
                expected = np.zeros(channels)
                expected[np.argsort(-importance.astype(np.float32), kind="stable")[:k]] = 1.0
                assert mask.dtype == tf.float32 and mask.numpy().sum() == k
                np.testing.assert_array_equal(mask.numpy(), expected)


def test_hard_mask_ties_resolved_by_index():
    importance = tf.constant([0.5, 1.0, 0.5, 1.0, 0.5, 0.2], tf.float64)
    np.testing.assert_array_equal(hard_mask(importance, 0.5).numpy(), [1, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(hard_mask(importance, 0.5, 4).numpy(), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(hard_mask(tf.ones(4), 0.5).numpy(), [1, 1, 0, 0])


def test_functions_trace_once_inside_tf_function(rng):
    vector = tf.TensorSpec([None], tf.float64)
    scalar = tf.TensorSpec([], tf.float64)

    @tf.function(input_signature=[vector, scalar, scalar])
    def probabilities_and_gradient(importance, keep_ratio, beta2):
        with tf.GradientTape() as tape:
            tape.watch(keep_ratio)
            loss = tf.reduce_sum(
                tf.range(tf.size(importance), dtype=tf.float64)
                * keep_probabilities(importance, keep_ratio, beta2)
            )
        return keep_probabilities(importance, keep_ratio, beta2), tape.gradient(loss, keep_ratio)

    solve = tf.function(solve_log_beta1, input_signature=[vector, scalar, scalar])
    sample = tf.function(sample_mask, input_signature=[vector, vector])
    inference_mask = tf.function(hard_mask, input_signature=[vector, scalar])

    for channels, keep_ratio, beta2 in ((8, 0.3, 0.5), (20, 0.7, 40.0)):
        importance = rng.lognormal(0.0, 1.0, channels)
        args = (
            tf.constant(importance),
            tf.constant(keep_ratio, tf.float64),
            tf.constant(beta2, tf.float64),
        )
        p, gradient = probabilities_and_gradient(*args)
        np.testing.assert_allclose(
            p.numpy(), numpy_keep_probabilities(importance, keep_ratio, beta2), atol=1e-9
        )
        assert np.isfinite(gradient.numpy())
        x = np.log(importance)
        log_beta1 = solve(tf.constant(x), *args[1:]).numpy()
        assert abs(numpy_sigmoid(beta2 * (x - log_beta1)).mean() - keep_ratio) < 1e-9
        u = rng.uniform(size=channels)
        np.testing.assert_array_equal(
            sample(p, tf.constant(u)).numpy(), (u < p.numpy()).astype(float)
        )
        assert inference_mask(args[0], args[1]).numpy().sum() == round(keep_ratio * channels)

    for function in (probabilities_and_gradient, solve, sample, inference_mask):
        assert function.experimental_get_tracing_count() == 1


def test_relative_steepness_does_not_depend_on_the_spread_of_the_importances():
    """BatchNorm |gamma| spread by 3%: the paper's absolute beta2 = 0.05 leaves every keep
    probability at the keep ratio; a relative beta2 gives the same masks at any spread."""
    z = np.random.default_rng(0).normal(size=32)
    narrow, wide = np.exp(0.03 * z), np.exp(0.3 * z)
    absolute = keep_probabilities(tf.constant(narrow), 0.4, 0.05).numpy()
    assert np.abs(absolute - 0.4).max() < 1e-3
    relative = keep_probabilities(tf.constant(narrow), 0.4, 3.0, relative=True).numpy()
    np.testing.assert_allclose(
        relative, keep_probabilities(tf.constant(wide), 0.4, 3.0, relative=True).numpy(),
        atol=0.02)
    assert relative.mean() == pytest.approx(0.4, abs=1e-6)
    top = np.argsort(z)[-8:]
    assert relative[top].mean() > 0.85 and relative[np.argsort(z)[:8]].mean() < 0.05


@pytest.mark.parametrize("beta2", (0.5, 50.0))
def test_blocks_each_keep_the_ratio_with_their_own_threshold(rng, beta2):
    """[B, C] importances (a grouped convolution's blocks): every row is the keep process of
    that row alone, so each block keeps the ratio on average, and the mean over all blocks
    still moves one for one with the keep ratio."""
    importance = rng.lognormal(0.0, 1.0, (3, 8)) * np.array([[1.0], [10.0], [0.1]])
    a = tf.Variable(0.3, dtype=tf.float64)
    with tf.GradientTape() as tape:
        p = keep_probabilities(tf.constant(importance), a, beta2)
        mean_p = tf.reduce_mean(p)
    for row, probabilities in zip(importance, p.numpy()):
        np.testing.assert_allclose(probabilities, numpy_keep_probabilities(row, 0.3, beta2),
                                   atol=1e-8)
    np.testing.assert_allclose(p.numpy().mean(axis=1), 0.3, atol=1e-8)
    assert abs(float(tape.gradient(mean_p, a)) - 1.0) < 1e-6


def test_hard_mask_with_blocks_keeps_the_top_of_every_block(rng):
    importance = rng.lognormal(0.0, 1.0, 12)
    mask = hard_mask(tf.constant(importance), 0.5, round_to=3, blocks=3).numpy()
    for block, kept in zip(importance.reshape(3, 4), mask.reshape(3, 4)):
        expected = np.zeros(4)
        expected[np.argsort(-block, kind="stable")[:2]] = 1.0
        np.testing.assert_array_equal(kept, expected)
