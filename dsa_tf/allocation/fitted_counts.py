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

SHIFT_RANGE = 64.0  # logits: at -64 every group is at its fewest channels, at +64 whole
BISECTIONS = 60


def fitted_counts(logits: np.ndarray, channels: np.ndarray, min_channels: int,
                  steps: np.ndarray, meets: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The kept counts of every group that follow ``sigmoid(logits)`` and fill a budget.

    Args:
        logits: [K] keep-ratio logits (DSA's Theta).
        channels: [K] channels of each group.
        min_channels: the fewest channels any group keeps.
        steps: [K] each group's step: counts are multiples of it, or the whole group.
        meets: whether counts ([K] integers) meet the budget; the fewest counts must.

    Returns:
        [K] int64 counts that meet the budget, none of which can keep one more step without
        breaking it.

    Raises:
        ValueError: the fewest counts do not meet the budget.
    """
    logits, channels = np.asarray(logits, np.float64), np.asarray(channels, np.int64)
    steps = np.asarray(steps, np.int64)

    def counts(shift: float) -> np.ndarray:
        ratios = 1.0 / (1.0 + np.exp(-(logits + shift)))
        return np.asarray(kept_count(ratios, channels, min_channels, steps), np.int64)

    low, high = -SHIFT_RANGE, SHIFT_RANGE
    if not meets(counts(low)):
        raise ValueError("The fewest channels the groups may keep do not meet the budget.")
    if meets(counts(high)):
        return counts(high)
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if meets(counts(middle)) else (low, middle)
    result = counts(low)
    targets = channels / (1.0 + np.exp(-(logits + low)))
    while True:
        raised = [np.where(np.arange(len(result)) == k,
                           np.minimum(result + steps, channels), result)
                  for k in range(len(result))]
        open_ = [k for k in range(len(result)) if result[k] < channels[k] and meets(raised[k])]
        if not open_:
            return result
        result = raised[max(open_, key=lambda k: (targets[k] - result[k]) / steps[k])]
