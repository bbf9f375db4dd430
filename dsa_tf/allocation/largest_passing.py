"""largest_passing: the largest value in an interval that a monotone test passes, by bisection.

The allocators search one number for the widest configuration that meets a budget: the one
keep ratio of :func:`dsa_tf.uniform_allocation`, the common logit shift of
:func:`dsa_tf.allocation.fitted_counts.fitted_counts`, the uniform keep ratio
:class:`dsa_tf.DSACallback` scales its ``keep_floor`` by. Their tests ("the counts at x meet
the budget") pass up to some x and fail above it, since more channels never cost less; this
is the one search they share.

Example:
    >>> round(largest_passing(lambda x: x * x <= 2.0, 0.0, 2.0), 6)
    1.414214
    >>> largest_passing(lambda x: True, 0.0, 1.0)   # passes everywhere: the upper end
    1.0
"""

from __future__ import annotations

from collections.abc import Callable

HALVINGS = 60  # of the interval: far below the spacing of integer channel ratios


def largest_passing(test: Callable[[float], bool], low: float, high: float,
                    halvings: int = HALVINGS) -> float:
    """The largest x in [low, high] for which ``test(x)`` holds, within
    ``(high - low) / 2**halvings``; ``high`` itself when it passes there.

    Args:
        test: holds at ``low`` (the caller checks, where it may not), and where it fails at
            some x it fails at every larger x.
        low, high: the interval searched.
        halvings: how many times the interval is halved.

    Returns:
        A value at which ``test`` holds (``low`` at worst).
    """
    if test(high):
        return high
    for _ in range(halvings):
        middle = (low + high) / 2
        low, high = (middle, high) if test(middle) else (low, middle)
    return low
