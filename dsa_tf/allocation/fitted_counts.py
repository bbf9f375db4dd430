"""fitted_counts: kept channel counts that follow a set of keep ratios and fill a budget.

A gate keeps ``kept_count(a)`` channels: ``round(a * C)`` rounded *down* to its step
(``round_to``), so counts that meet a budget at some ratios still meet it rounded. With steps
of 8 or 16 (a latency budget's default, or ``round_to`` by hand), rounding down every group
can leave much of the budget unused: DSA's allocation of a small residual CNN under half its
LiteRT latency froze at 0.41 of the latency, 0.41x measured (BENCHMARKS.md, "DSA under a
latency budget"). :class:`dsa_tf.DSACallback` therefore freezes stepped masks at fitted
counts, which keep the learned allocation's shape and use the budget:

1. every keep-ratio logit moved by the same shift, the largest (up or down) whose rounded
   counts meet the budget (the learned order of the groups kept);
2. then, while some group can keep one more step within the budget, the one furthest below
   its shifted ratio (in steps) does; until no group can.

Example:
    >>> import numpy as np
    >>> from dsa_tf.allocation.keep_process import kept_count
    >>> logits = np.array([-0.5, 1.0, 0.0])
    >>> channels, steps = np.array([64, 64, 32]), np.array([16, 16, 8])
    >>> np.asarray(kept_count(1 / (1 + np.exp(-logits)), channels, 1, steps)).tolist()
    [16, 32, 16]
    >>> def meets(counts):   # a budget of 100 channels
    ...     return counts.sum() <= 100
    >>> fitted_counts(logits, channels, 1, steps, meets).tolist()
    [32, 48, 16]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dsa_tf.allocation.keep_process import kept_count
from dsa_tf.allocation.largest_passing import largest_passing

SHIFT_RANGE = 64.0  # logits: at -64 every group is at its fewest channels, at +64 whole


def fitted_counts(logits: np.ndarray, channels: np.ndarray, min_channels: int,
                  steps: np.ndarray, meets: Callable[[np.ndarray], bool], *,
                  most_steps: int | None = None) -> np.ndarray:
    """The kept counts of every group that follow ``sigmoid(logits)`` and fill a budget.

    Args:
        logits: [K] keep-ratio logits (DSA's Theta).
        channels: [K] channels of each group.
        min_channels: the fewest channels any group keeps.
        steps: [K] each group's step: counts are multiples of it, or the whole group.
        meets: whether counts ([K] integers) meet the budget; the fewest counts must.
        most_steps: the most steps (2.) any group keeps above its count at the common shift
            (1.); default: no limit.

    Returns:
        [K] int64 counts that meet the budget, none of which can keep one more step without
        breaking it (or the limit of ``most_steps``).

    Raises:
        ValueError: the fewest counts do not meet the budget.
    """
    channels, steps = np.asarray(channels, np.int64), np.asarray(steps, np.int64)
    shift = largest_shift(logits, channels, min_channels, steps, meets)
    result = _counts(logits, shift, channels, min_channels, steps)
    ceiling = channels if most_steps is None else np.minimum(result + most_steps * steps, channels)
    targets = channels / (1.0 + np.exp(-(np.asarray(logits, np.float64) + shift)))
    while True:
        raised = [np.where(np.arange(len(result)) == k,
                           np.minimum(result + steps, channels), result)
                  for k in range(len(result))]
        open_ = [k for k in range(len(result)) if result[k] < ceiling[k] and meets(raised[k])]
        if not open_:
            return result
        result = raised[max(open_, key=lambda k: (targets[k] - result[k]) / steps[k])]


def largest_shift(logits: np.ndarray, channels: np.ndarray, min_channels: int,
                  steps: np.ndarray, meets: Callable[[np.ndarray], bool]) -> float:
    """The largest common shift s in [-64, 64] (by bisection) such that the counts kept at
    ``sigmoid(logits + s)`` (:func:`dsa_tf.allocation.keep_process.kept_count`) meet the
    budget; arguments as for :func:`fitted_counts`.

    Example:
        >>> round(largest_shift(np.zeros(2), np.array([10, 10]), 1, np.ones(2),
        ...                     lambda counts: counts.sum() <= 10), 2)   # 5 of 10 each
        0.2

    Raises:
        ValueError: the fewest counts do not meet the budget.
    """
    def test(shift: float) -> bool:
        return meets(_counts(logits, shift, channels, min_channels, steps))

    if not test(-SHIFT_RANGE):
        raise ValueError("The fewest channels the groups may keep do not meet the budget.")
    return largest_passing(test, -SHIFT_RANGE, SHIFT_RANGE)


def _counts(logits: np.ndarray, shift: float, channels: np.ndarray, min_channels: int,
            steps: np.ndarray) -> np.ndarray:
    ratios = 1.0 / (1.0 + np.exp(-(np.asarray(logits, np.float64) + shift)))
    return np.asarray(kept_count(ratios, channels, min_channels, steps), np.int64)
