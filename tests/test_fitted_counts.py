"""fitted_counts: stepped kept counts that follow keep ratios and fill a budget."""

import numpy as np
import pytest

from dsa_tf.allocation.fitted_counts import fitted_counts
from dsa_tf.allocation.keep_process import kept_count


@pytest.mark.parametrize("seed", range(6))
def test_fitted_counts_meet_the_budget_fill_it_and_keep_at_least_the_rounded_ones(seed):
    rng = np.random.default_rng(seed)
    groups = 7
    channels = rng.choice([16, 32, 48, 64, 128], groups)
    steps = rng.choice([8, 16], groups)
    costs = rng.uniform(0.1, 2.0, groups)  # a budget linear in the counts
    logits = rng.normal(1.0, 1.5, groups)
    rounded = np.asarray(kept_count(1 / (1 + np.exp(-logits)), channels, 1, steps))
    budget = float(costs @ rounded) * rng.uniform(0.8, 1.3)

    def meets(counts):
        return float(costs @ counts) <= budget

    counts = fitted_counts(logits, channels, 1, steps, meets)
    assert meets(counts)
    assert all(c == n or c % s == 0 for c, n, s in zip(counts, channels, steps))
    for k in range(groups):  # no group could keep one more step
        if counts[k] < channels[k]:
            more = counts.copy()
            more[k] = min(counts[k] + steps[k], channels[k])
            assert not meets(more), (k, counts)
    if meets(rounded):  # what rounding down kept, and more where the budget allows
        assert np.all(counts >= rounded)
        assert costs @ counts >= costs @ rounded


def test_fitted_counts_keep_the_learned_order_where_the_budget_binds():
    # equal costs and steps: the group with the higher logit keeps at least as many
    logits = np.array([-1.0, 0.0, 1.0, 2.0])
    channels, steps = np.full(4, 64), np.full(4, 8)
    counts = fitted_counts(logits, channels, 1, steps, lambda c: c.sum() <= 128)
    assert counts.sum() == 128
    assert np.all(np.diff(counts) >= 0), counts


def test_fitted_counts_refuse_an_unreachable_budget():
    with pytest.raises(ValueError, match="fewest"):
        fitted_counts(np.zeros(2), np.array([16, 16]), 1, np.array([8, 8]),
                      lambda c: c.sum() < 16)
