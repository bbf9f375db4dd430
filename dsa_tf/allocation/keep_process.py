"""Differentiable pruning process of one channel group (the DSA paper's keep process).

A group has C channels with base importances b_i > 0 (e.g. |gamma_i| of its BatchNorm) and one keep
ratio a in (0, 1). Channel i is kept with probability

    p_i = sigmoid(beta2 * (log b_i - log beta1)),

where beta2 > 0 is the steepness (annealed upwards during training) and beta1 is defined implicitly
by the expectation condition

    (1/C) * sum_i p_i = a.

The mean probability is strictly decreasing in log beta1, so log beta1 is found by bisection
(`solve_log_beta1`).

Implicit gradient. Write l = log beta1 and S = sum_j p_j (1 - p_j). Differentiating the condition
(1/C) sum_i sigmoid(beta2 (log b_i - l)) = a with respect to a gives -(beta2 / C) * S * dl/da = 1:

    dl/da = -C / (beta2 * S)           (negative: a larger keep ratio needs a lower threshold)
    dp_i/da = C * p_i (1 - p_i) / S    (so d mean(p) / da = 1 exactly).

Written without the minus sign, as it is sometimes summarised, dl/da would be wrong: the sign
above is the one that makes mean(p) track a and is what the tests check against finite
differences. `keep_probabilities` realises it with the autodiff trick
l = stop_grad(l*) + s * (a - stop_grad(a)), s = stop_grad(-C / (beta2 * S)): the
forward value is l* and the only gradient path is through a. Importances and beta2 are detached.

Sampling. The mask m_i ~ Bernoulli(p_i) is drawn from caller-supplied uniform noise
(`sample_mask`), with the straight-through gradient dm/dp = 1. At inference `hard_mask` keeps the
top-k channels by importance, k = `kept_count(a, C)`.

All functions are pure TensorFlow, graph-compatible inside `tf.function`, and accept float32 or
float64 importances; results have the importance dtype.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# Smallest positive normal number of each supported dtype (2**(1 - 2**(exponent bits - 1))).
_TINY = {tf.float32: 2.0**-126, tf.float64: 2.0**-1022}


def _tiny(dtype: tf.DType) -> float:
    """Smallest positive normal number of `dtype` (float32 or float64)."""
    if dtype not in _TINY:
        raise TypeError(f"importance must be float32 or float64, got {dtype.name}")
    return _TINY[dtype]


def _bracket_margin(dtype: tf.DType) -> float:
    """L = -log(tiny): sigmoid(L) rounds to 1 and sigmoid(-L) <= tiny in `dtype`.

    L is about 87.3 for float32 and 708.4 for float64.
    """
    return -math.log(_tiny(dtype))


def _as_dtype(value: tf.Tensor | float, dtype: tf.DType) -> tf.Tensor:
    """Converts a Python number directly to `dtype` (no float32 detour); casts tensors."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def solve_log_beta1(
    log_importance: tf.Tensor,
    keep_ratio: tf.Tensor | float,
    beta2: tf.Tensor | float,
    iterations: int = 50,
) -> tf.Tensor:
    """Solves mean_i sigmoid(beta2 * (log_importance_i - l)) == keep_ratio for l = log(beta1).

    Fixed-count bisection in the graph. The left side decreases monotonically in l. The bracket
    [min(log_importance) - L / beta2, max(log_importance) + L / beta2] with L = -log(tiny) (tiny =
    smallest positive normal number of the dtype; L ~ 87.3 for float32, ~ 708.4 for float64) gives
    mean = 1 at its lower end (sigmoid(L) rounds to 1) and mean <= tiny at its upper end, so it
    contains the root for every keep_ratio in [tiny, 1] and every beta2 > 0. A keep_ratio outside
    that range converges to the nearer end of the bracket.

    The bracket width is range(log_importance) + 2 L / beta2, halved `iterations` times. With the
    default 50 iterations the float64 error of mean(p) is below
    (beta2 * range / 4 + L / 2) / 2**50 (e.g. ~3e-13 for beta2 = 0.01, ~3e-11 for beta2 = 1e4 and a
    log range of 10). In float32 the bisection stops at adjacent floats of l after ~30 halvings;
    the error of mean(p) is then about beta2 / 4 * ulp(l) (e.g. ~6e-6 for beta2 = 50, |l| < 4).

    No gradient flows through this function (inputs and output are wrapped in tf.stop_gradient).

    Args:
        log_importance: float32 or float64 tensor of shape [C], log of the channel importances,
            or [B, C] for B blocks solved independently (one l per row).
        keep_ratio: scalar target mean probability a, in (0, 1).
        beta2: positive scalar steepness.
        iterations: number of bisection halvings (a Python int).

    Returns:
        Tensor log(beta1) in the dtype of `log_importance`: a scalar, or shape [B].

    Example:
        >>> x = tf.math.log(tf.constant([0.5, 1.0, 2.0, 4.0], tf.float64))
        >>> l = solve_log_beta1(x, 0.5, 5.0)
        >>> round(float(tf.reduce_mean(tf.sigmoid(5.0 * (x - l)))), 9)
        0.5
    """
    x = tf.stop_gradient(tf.convert_to_tensor(log_importance))
    dtype = x.dtype
    a = tf.stop_gradient(_as_dtype(keep_ratio, dtype))
    steepness = tf.stop_gradient(_as_dtype(beta2, dtype))
    margin = tf.constant(_bracket_margin(dtype), dtype) / steepness
    lower = tf.reduce_min(x, axis=-1) - margin
    upper = tf.reduce_max(x, axis=-1) + margin

    def halve(lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mid = 0.5 * (lo + hi)
        above_target = tf.reduce_mean(tf.sigmoid(steepness * (x - mid[..., None])), -1) > a
        # Mean still too high at mid: the root lies above mid.
        return tf.where(above_target, mid, lo), tf.where(above_target, hi, mid)

    lower, upper = tf.while_loop(
        lambda lo, hi: True, halve, (lower, upper), maximum_iterations=iterations
    )
    return tf.stop_gradient(0.5 * (lower + upper))


def keep_probabilities(
    importance: tf.Tensor,
    keep_ratio: tf.Tensor | float,
    beta2: tf.Tensor | float,
    floor: float = 0.0,
    relative: bool = False,
) -> tf.Tensor:
    """Keep probabilities p_i = sigmoid(beta2 * (log b_i - log beta1)) with mean(p) == keep_ratio.

    Importances are clamped to the smallest positive normal number of their dtype before the log
    (so zero or negative entries behave like the least important channel) and are detached, as is
    beta2: `tape.gradient` returns None for both. The gradient with respect to `keep_ratio` is the
    implicit one, dp_i/da = C * p_i (1 - p_i) / sum_j p_j (1 - p_j) (module docstring).

    Degenerate case: when beta2 * sum_j p_j (1 - p_j) <= C * tiny (every p_j is exactly 0 or 1 at
    the dtype precision: hard thresholding at huge beta2, or keep_ratio == 1, which sigmoid(Theta)
    reaches in float32 for Theta >~ 17) the implicit derivative is undefined and the gradient with
    respect to keep_ratio is 0 instead of NaN/inf. Otherwise |dp_i/da| <= C stays finite even when
    the sum is tiny.

    Args:
        importance: float32 or float64 tensor of shape [C], base importances b_i > 0, or
            [B, C] for B blocks that each keep the ratio (every row has mean(p) == a: the
            blocks of a grouped convolution's channels).
        keep_ratio: scalar keep ratio a in (0, 1); may be a tensor or variable of any float dtype
            (it is cast to the importance dtype, differentiably).
        beta2: positive scalar steepness.
        floor: optional probability floor (Python float). If > 0, returns clip(p + floor, 0, 1),
            as the reference code does with 0.01; mean(p) == keep_ratio holds exactly only with
            the default floor 0.
        relative: measure beta2 in units of the spread of the log importances: the
            steepness is beta2 / (std_i(log b_i) + 1e-3), so the same beta2 gives masks
            equally close to top-k whatever the scale of the importances (the BatchNorm
            |gamma| of a network trained with weight decay often spread by only a few percent,
            where the paper's absolute beta2 = 0.05 leaves every p_i within 0.1% of a).

    Returns:
        Tensor of the importance's shape and dtype.

    Example:
        >>> b = tf.constant([0.1, 0.2, 0.4, 0.8], tf.float64)
        >>> a = tf.Variable(0.5, dtype=tf.float64)
        >>> with tf.GradientTape() as tape:
        ...     mean_p = tf.reduce_mean(keep_probabilities(b, a, 5.0))
        >>> round(float(mean_p), 6), round(float(tape.gradient(mean_p, a)), 6)
        (0.5, 1.0)
    """
    b = tf.stop_gradient(tf.convert_to_tensor(importance))
    dtype = b.dtype
    a = _as_dtype(keep_ratio, dtype)
    steepness = tf.stop_gradient(_as_dtype(beta2, dtype))
    log_b = tf.math.log(tf.maximum(b, tf.constant(_tiny(dtype), dtype)))
    if relative:
        steepness = steepness / (tf.math.reduce_std(log_b) + tf.constant(1e-3, dtype))

    log_beta1_star = solve_log_beta1(log_b, a, steepness)
    p_star = tf.sigmoid(steepness * (log_b - log_beta1_star[..., None]))
    log_beta1 = log_beta1_star + _implicit_slope(p_star, steepness) * (a - tf.stop_gradient(a))
    p = tf.sigmoid(steepness * (log_b - log_beta1[..., None]))
    if floor > 0.0:
        p = tf.clip_by_value(p + tf.constant(floor, dtype), 0.0, 1.0)
    return p


def _implicit_slope(p: tf.Tensor, steepness: tf.Tensor) -> tf.Tensor:
    """d log(beta1) / da = -C / (beta2 * sum_j p_j (1 - p_j)), or 0 when that sum underflows
    (per row of a [B, C] ``p``)."""
    dtype = p.dtype
    channels = tf.cast(tf.shape(p)[-1], dtype)
    denominator = steepness * tf.reduce_sum(p * (1.0 - p), axis=-1)
    defined = denominator > channels * tf.constant(_tiny(dtype), dtype)
    safe_denominator = tf.where(defined, denominator, tf.ones_like(denominator))
    slope = tf.where(defined, -channels / safe_denominator, tf.zeros_like(denominator))
    return tf.stop_gradient(slope)


def sample_mask(probabilities: tf.Tensor, uniform_noise: tf.Tensor) -> tf.Tensor:
    """Bernoulli mask m_i = 1[u_i < p_i] with the straight-through gradient dm/dp = 1.

    The caller supplies the uniform noise u (same shape as p, values in [0, 1)) so that several
    call sites can share one sample, e.g. every layer of a group or a replayed step: generate it
    with tf.random.stateless_uniform(shape, seed=[seed, step]). The forward value is exactly 0 or
    1 (computed as m + (p - stop_grad(p))), in the dtype of `probabilities`.

    Args:
        probabilities: keep probabilities p, any shape, float dtype.
        uniform_noise: uniform samples u of the same shape (cast to the dtype of p).

    Returns:
        The mask, same shape and dtype as `probabilities`; its gradient with respect to p is the
        upstream gradient unchanged.

    Example:
        >>> p = tf.constant([0.2, 0.9])
        >>> sample_mask(p, tf.constant([0.5, 0.5])).numpy()
        array([0., 1.], dtype=float32)
    """
    p = tf.convert_to_tensor(probabilities)
    u = _as_dtype(uniform_noise, p.dtype)
    mask = tf.cast(u < p, p.dtype)
    return tf.stop_gradient(mask) + (p - tf.stop_gradient(p))


def kept_count(
    keep_ratio: tf.Tensor | float, channels: tf.Tensor | int, min_channels: int = 1,
    round_to: int | np.ndarray = 1,
) -> tf.Tensor:
    """Number of channels kept at inference.

    k = round(a * C), clipped to [1, C] and raised to ``min_channels``. With ``round_to=N > 1``
    every group keeps a multiple of N channels or all of them: k = C when round(a * C) = C, else
    round(a * C) rounded *down* to a multiple of N (at least the smallest multiple of N that
    is >= min_channels, or C if that is larger). Above that floor, rounding down never keeps more
    channels than ``round_to=1`` would, so a configuration that meets a budget still meets it
    when rounded.

    round is tf.round (half to even, like numpy): 0.25 * 10 -> 2. A Python float keep_ratio is
    used in float64; a tensor keep_ratio is cast to float64 from its own dtype, so a float32
    ratio can round differently from the same Python number at an exact half.

    Args:
        keep_ratio: scalar keep ratio a.
        channels: number of channels C >= 1 (Python int or scalar integer tensor).
        min_channels: lower bound on the count before clipping to [1, C].
        round_to: kept counts are multiples of this (or C).

    Arrays of keep ratios, channels and ``round_to`` (one per group) give one count per group.

    Returns:
        Scalar int32 tensor k.

    Example:
        >>> int(kept_count(0.3, 16))
        5
        >>> int(kept_count(0.3, 16, round_to=4)), int(kept_count(0.99, 20, round_to=8))
        (4, 20)
    """
    a = _as_dtype(keep_ratio, tf.float64)
    total = tf.cast(channels, tf.int32)
    step = tf.maximum(tf.constant(round_to, tf.int32), 1)
    rounded = tf.cast(tf.round(a * tf.cast(total, tf.float64)), tf.int32)
    multiple = tf.where(rounded >= total, total, rounded // step * step)
    smallest = tf.minimum(total, (max(int(min_channels), 1) + step - 1) // step * step)
    return tf.clip_by_value(tf.maximum(multiple, smallest), 1, total)


def hard_mask(
    importance: tf.Tensor, keep_ratio: tf.Tensor | float, min_channels: int = 1,
    round_to: int = 1, blocks: int = 1,
) -> tf.Tensor:
    """Deterministic inference mask keeping the k most important channels, k = `kept_count`.

    Ties are broken by lower channel index (tf.math.top_k is stable). The raw importance values
    are ranked (no clamping). With ``blocks=B > 1`` the channels are B equal, contiguous blocks
    (a grouped convolution's groups) and each keeps its k / B most important channels; ``round_to``
    must then be a multiple of B, so that k is.

    Args:
        importance: float32 or float64 tensor of shape [C].
        keep_ratio: scalar keep ratio a.
        min_channels: minimum number of kept channels (see `kept_count`).
        round_to: kept counts are multiples of this or all channels (see `kept_count`).
        blocks: the number of blocks that keep equal counts.

    Returns:
        Float mask of shape [C] in the importance dtype, exactly k ones.

    Example:
        >>> hard_mask(tf.constant([0.3, 0.1, 0.3, 0.2]), 0.5).numpy()
        array([1., 0., 1., 0.], dtype=float32)
        >>> b = tf.constant([0.4, 0.3, 0.2, 0.1])
        >>> hard_mask(b, 0.5).numpy(), hard_mask(b, 0.5, round_to=2, blocks=2).numpy()
        (array([1., 1., 0., 0.], dtype=float32), array([1., 0., 1., 0.], dtype=float32))
    """
    b = tf.stop_gradient(tf.convert_to_tensor(importance))
    channels = tf.shape(b)[0]
    k = kept_count(keep_ratio, channels, min_channels, round_to)
    rows = tf.reshape(b, [blocks, -1])
    kept = tf.math.top_k(rows, k=k // blocks, sorted=True).indices
    kept = tf.reshape(kept + tf.range(blocks)[:, None] * tf.shape(rows)[1], [-1])
    return tf.scatter_nd(kept[:, tf.newaxis], tf.ones_like(kept, dtype=b.dtype), [channels])
