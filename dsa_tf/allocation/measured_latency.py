"""within_measured_latency: a latency-budgeted allocation timed on the device it is for.

A latency table predicts; the device decides. An allocator that searches the table's
predictions for cheap configurations also finds the configurations whose predictions are
optimistic: on MobileNetV2 (224x224, float32, 1 thread) the magnitude allocation the table
predicted at half the unpruned latency measured 0.520x with one table and 0.568x with
another measured later the same day, while hand-rounded FLOPs budgets ran faster than
predicted; allocated again from the measurement, 0.480x (BENCHMARKS.md "Latency budgets").
So when the table was measured on this device (same device and runtime: the table a latency
budget measures and caches by default, :func:`dsa_tf.deploy.profile.cached_table`), the
baseline allocators time what they chose: the stripped model and the unpruned one as LiteRT
models side by side (:func:`dsa_tf.compare_tflite_latency`, interleaved rounds, each model's
fastest round, with the table's precision and threads). An allocation is kept when it
measures between 93% and 97% of the budget (:data:`CLOSE`, :data:`MARGIN`: a margin for
timing noise). Over 97%, they allocate again to a tighter prediction; under 93%, to a looser
one, so that the latency the user gave buys capacity rather than being left unused (a
ResNet-56 allocated to half its latency measured 0.442x: BENCHMARKS.md "Latency budgets").
The next prediction aims at 95% (:data:`AIM`): the last one scaled by its measured error,
then along the line through the last two timings, always between the largest prediction
measured within the margin and the smallest measured over it; up to :data:`TRIES`
allocations timed. An allocation the allocator returns again is not timed again: it counts as
measured at the budget that gave it and the search goes on between (:func:`timed_search`), so
that a cliff in the runtime's times between two allocations (0.50x, then 0.34x for the next
tighter one) does not leave a third of the budget unused where an allocation between exists.
The result is, of the allocations measured within the margin, the one the table predicts
slowest (the most capacity): measurements of separate checks are not comparable to a few
percent on a machine whose speed drifts (one allocation measured 0.418x in its check and
0.455x minutes later, beside the unpruned model both times: BENCHMARKS.md run 10), the
table's predictions of two allocations are. Where none measured within the margin, the
fastest, with a warning if it is over the budget itself. A table from
another device is used as it is (its predictions are all there is). DSA learns its
allocation against the prediction during training; when its masks freeze,
:class:`dsa_tf.DSACallback` fits their counts to the budget through this same check,
tightening only (the run report shows the measured latency beside the predicted one).

A relative budget is checked against the unpruned model's measured latency, an absolute one
(milliseconds) against the clock.

Example:
    >>> import dsa_tf
    >>> from dsa_tf.deploy.latency_table import LatencyTable
    >>> measured_here(LatencyTable("a phone", "ai-edge-litert 1.0", "float32", 1))
    False
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsa_tf.allocation.budget import fewest_counts, usage
from dsa_tf.allocation.gated_strip import strip
from dsa_tf.allocation.resources import ResourceModel
from dsa_tf.deploy.latency_table import LatencyTable, runtime_version, this_device
from dsa_tf.deploy.profile import tflite_for_timing
from dsa_tf.deploy.timing import compare_tflite_latency

TRIES = 4  # allocations timed at most: the first, and three moved by the measurements
SAME = 6  # budgets tried between two timings while the allocator returns allocations timed before
# An allocation is kept when it measures within MARGIN of the budget and at least CLOSE of
# it; later allocations aim at AIM. The margin is for timing noise: on a 2-core VM one
# MobileNetV2 allocation measured 0.498x in its check and 0.530x in a later run of the
# benchmark (BENCHMARKS.md "Latency budgets").
MARGIN, AIM, CLOSE = 0.97, 0.95, 0.93
ROUNDS, INVOKES = 15, 30  # per check, as benchmarks/latency_budget.py times: 450 invokes of each


def measured_here(table: LatencyTable) -> bool:
    """Whether ``table`` was measured on this device with the runtime in use here."""
    return (table.device, table.runtime) == (this_device(), runtime_version())


def within_measured_latency(model: Any, budget: float | Mapping[str, float], resource: str,
                            resources: ResourceModel, fractions: Mapping[str, float],
                            allocate: Callable[[Mapping[str, float]], dict[str, np.ndarray]],
                            *, min_channels: int, round_to: np.ndarray,
                            exclude: Iterable[str] = (), loosen: bool = True,
                            progress: Callable[[str], None] | None = print,
                            ) -> dict[str, np.ndarray]:
    """``allocate(fractions)``, checked by timing under a latency budget (see the module).

    Args:
        model: the model being allocated, plain or gated (not changed).
        budget, resource: the budget as the user gave it (a relative latency budget is
            checked against the unpruned model's measured latency, one in milliseconds
            against the clock).
        resources: the model's resource model.
        fractions: the budget as fractions of the model's resources
            (:func:`dsa_tf.allocation.budget.budget_fractions`).
        allocate: ``fractions -> keep dict``, the allocator at a budget.
        min_channels, round_to: the allocator's rounding (round_to per group, plan order):
            no budget is tightened below what the fewest channels predict.
        exclude: as for :func:`dsa_tf.analyze`.
        loosen: whether an allocation measured under 93% of the budget is allocated again
            to a looser prediction (False: only tighter ones, so the predicted latency stays
            within ``fractions``).
        progress: called with a line per check (None: quiet).

    Returns:
        The keep dict of the allocation the table predicts slowest of those that measured
        within the budget less its margin (:data:`MARGIN`); if none did, the fastest one
        measured (with a warning if it is over the budget itself).
    """
    keep = allocate(fractions)
    if "latency" not in fractions or not measured_here(resources.latency.table):
        return keep
    table = resources.latency.table
    given = dict(budget) if isinstance(budget, Mapping) else {resource: budget}
    latency_ms = float(given["latency"]) if given["latency"] > 1 else None
    fewest = fewest_counts(resources.plan, min_channels, round_to)
    reachable = usage(resources, fewest, ["latency"])["latency"]

    def predict(keep: Mapping[str, np.ndarray]) -> float:
        return resources.fractions(resources.plan.keep_ratios(keep), ["latency"])["latency"]

    with tempfile.TemporaryDirectory() as directory:
        unpruned = _export(strip(model, keep={}, exclude=exclude), table.precision, directory,
                           "unpruned")  # without gates, if ``model`` is gated
        timed = iter(range(1, TRIES + 1))

        def measure(keep: Mapping[str, np.ndarray]) -> tuple[float, float]:
            return _time(table, unpruned, _export(strip(model, keep, exclude=exclude),
                                                  table.precision, directory,
                                                  f"try_{next(timed)}"))

        return timed_search(keep, allocate, predict, measure, fractions,
                            latency_ms=latency_ms, reachable=reachable, loosen=loosen,
                            progress=progress)


def timed_search(keep: dict[str, np.ndarray],
                 allocate: Callable[[Mapping[str, float]], dict[str, np.ndarray]],
                 predict: Callable[[Mapping[str, np.ndarray]], float],
                 measure: Callable[[Mapping[str, np.ndarray]], tuple[float, float]],
                 fractions: Mapping[str, float], *, latency_ms: float | None = None,
                 reachable: float = 0.0, loosen: bool = True,
                 progress: Callable[[str], None] | None = print) -> dict[str, np.ndarray]:
    """The search of :func:`within_measured_latency`, given how to allocate, predict and
    measure: up to :data:`TRIES` allocations timed, starting from ``keep``.

    Under a mixed budget whose other constraints decide the allocation (the allocator
    returns it without the latency budget too), one measured under the budget is kept as it
    is: no looser latency budget can change it.

    Between timings, an allocation the allocator returns again (its steps: a range of
    predicted budgets gives one allocation) is not timed again: it counts as measured at the
    budget that gave it, which narrows the range left to search, and the allocator is asked
    again, up to :data:`SAME` times per timing, so that a cliff in the measurements between
    two allocations is searched rather than given up on.

    Args:
        keep: the first allocation (``allocate(fractions)``).
        allocate: ``fractions -> keep dict``, the allocator at a budget.
        predict: ``keep dict -> predicted latency``, a fraction of the unpruned model's.
        measure: ``keep dict -> (unpruned ms, ms)``, timed side by side.
        fractions: the budget as fractions of the model's resources.
        latency_ms: an absolute budget in milliseconds (None: ``fractions["latency"]`` of
            the unpruned model's measured latency).
        reachable: the smallest predicted latency the allocator's rounding reaches.
        loosen, progress: as for :func:`within_measured_latency`.

    Returns:
        The allocation chosen as :func:`within_measured_latency` describes.

    Example:
        An allocator with three allocations (30, 46 or 48 channels kept, by the budget
        given), and the latency each measures (a cliff below 46):

        >>> ratio = {30: 0.34, 46: 0.47, 48: 0.52}
        >>> def allocate(fractions):
        ...     budget = fractions["latency"]
        ...     return {"conv": np.arange(30 if budget < 0.46 else 46 if budget < 0.48 else 48)}
        >>> keep = timed_search(allocate({"latency": 0.5}), allocate,
        ...                     lambda keep: keep["conv"].size / 100,
        ...                     lambda keep: (1.0, ratio[keep["conv"].size]),
        ...                     {"latency": 0.5}, progress=None)
        >>> keep["conv"].size  # 48: over 0.485x; 30: far under; 46 found between them
        46
    """
    tried = []  # (predicted, measured, keep) of each allocation timed
    pairs = []  # (predicted, measured) pairs that steer the search, timed or not
    for attempt in range(1, TRIES + 1):
        full_ms, ms = measure(keep)
        limit = fractions["latency"] if latency_ms is None else latency_ms / full_ms
        cap = MARGIN * limit
        tried.append((predict(keep), ms / full_ms, keep))
        pairs.append(tried[-1][:2])
        if progress:
            progress(f"latency: the allocation measures {ms:.3f} ms, {ms / full_ms:.3f}x "
                     f"the unpruned model's {full_ms:.3f} ms on this device ("
                     f"{'within' if ms / full_ms <= cap else 'over'} {cap:.3f}x: the "
                     f"budget's {limit:.3f}x less a {1 - MARGIN:.0%} margin for timing "
                     f"noise)")
        if (CLOSE * limit if loosen else 0.0) <= ms / full_ms <= cap or attempt == TRIES:
            break
        others = [name for name in fractions if name != "latency"]
        if (ms / full_ms < CLOSE * limit and others
                and _same(allocate({**fractions, "latency": 1.0}), keep)):
            if progress:
                progress(f"latency: the {' and '.join(others)} budget decides this "
                         f"allocation (without the latency budget it is the same), so a "
                         f"looser latency budget cannot add to it")
            break
        for _ in range(SAME):
            moved = float(np.clip(_next_target(pairs, cap), reachable, 1.0))
            keep = allocate({**fractions, "latency": moved})
            before = next((t for t in tried if _same(keep, t[2])), None)
            if before is None:
                break
            pairs.append((moved, before[1]))  # measured as before, at this budget
        else:
            if progress:
                progress("latency: the allocator returns only allocations measured before: "
                         "its steps allow nothing in between")
            break
        if progress:
            progress(f"latency: allocating again to {moved:.3f} of the predicted latency, "
                     f"{'tighter' if ms / full_ms > cap else 'looser'} (attempt "
                     f"{attempt + 1} of {TRIES})")
    within = [t for t in tried if t[1] <= cap]
    if within:  # the largest by the table: timings of separate checks drift (module doc)
        return max(within, key=lambda t: t[:2])[2]
    fastest = min(tried, key=lambda t: t[1])
    if fastest[1] <= limit:
        return fastest[2]  # within the budget, if not its margin
    warnings.warn(f"The allocation measures {fastest[1]:.3f}x the unpruned model's latency "
                  f"on this device, over the budget's {limit:.3f}x, after {len(tried)} "
                  f"allocation(s) (the smallest reachable prediction is {reachable:.3f}). "
                  f"Timings vary with the machine's load: measure on a quiet machine, or give "
                  f"a lower budget.", stacklevel=4)
    return fastest[2]


def time_against_unpruned(gated: Any, table: LatencyTable) -> tuple[float, float]:
    """The measured latency in ms of ``gated``'s unpruned network and of its stripped model
    (what its gates keep), side by side on this device with ``table``'s precision and
    threads."""
    with tempfile.TemporaryDirectory() as directory:
        return _time(table, _export(strip(gated, keep={}), table.precision, directory, "full"),
                     _export(strip(gated), table.precision, directory, "stripped"))


def _time(table: LatencyTable, unpruned: str, stripped: str) -> tuple[float, float]:
    full, small = compare_tflite_latency([unpruned, stripped], threads=table.threads,
                                         rounds=ROUNDS, invokes=INVOKES)
    return full.min_ms, small.min_ms


def _next_target(tried: list[tuple[float, float]], cap: float) -> float:
    """The predicted-latency budget to allocate to next, from the ``(predicted, measured)``
    latency pairs of the allocations tried so far, aiming at ``AIM / MARGIN * cap``: the last
    prediction scaled by the measured error, or, from the second try on, the line through
    the last two pairs where it agrees in direction (a prediction off by a fixed amount as
    well as a factor), moving at most twice as far as the scaling; and strictly between the
    largest prediction measured within ``cap`` and the smallest measured over it."""
    aim = AIM / MARGIN * cap
    predicted, measured = tried[-1]
    scaled = predicted * aim / measured - predicted
    step = scaled
    if len(tried) > 1:
        before, measured_before = tried[-2]
        if (measured - measured_before) * (predicted - before) > 0:
            secant = (aim - measured) * (predicted - before) / (measured - measured_before)
            if secant * scaled > 0:  # timings close together extrapolate far: clamped
                step = float(np.sign(secant)) * min(abs(secant), 2 * abs(scaled))
    target = predicted + step
    low = max((p for p, m in tried if m <= cap), default=0.0)
    high = min((p for p, m in tried if m > cap), default=np.inf)
    if low < target < high or not np.isfinite(high):
        return target
    return (low + high) / 2


def _same(keep: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> bool:
    return keep.keys() == other.keys() and all(
        np.array_equal(keep[name], other[name]) for name in keep)


def _export(model: Any, precision: str, directory: str, name: str) -> str:
    path = os.path.join(directory, f"{name}.tflite")
    Path(path).write_bytes(tflite_for_timing(model, precision))
    return path
