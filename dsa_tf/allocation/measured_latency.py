"""within_measured_latency: a latency-budgeted allocation timed on the device it is for.

A latency table predicts; the device decides. An allocator that searches the table's
predictions for cheap configurations also finds the configurations whose predictions are
optimistic: on MobileNetV2 (224x224, float32, 1 thread) the magnitude allocation the table
predicted at half the unpruned latency measured 0.520x with one table and 0.568x with
another measured later the same day, while hand-rounded FLOPs budgets ran faster than
predicted; allocated again from the measurement, 0.480x (BENCHMARKS.md "Latency budgets").
So when the table was measured
on this device (same device and runtime: the table a latency budget measures and caches by
default, :func:`dsa_tf.deploy.profile.cached_table`), the baseline allocators time what they
chose: the stripped model and the unpruned one as LiteRT models side by side
(:func:`dsa_tf.compare_tflite_latency`, interleaved rounds, each model's fastest round, with
the table's precision and threads). Where the measurement is over the budget, they allocate
again to a tighter prediction (the last allocation's prediction scaled by the measured
overshoot, then along the line through the last two timings) and time again, up to
:data:`TRIES` allocations; a result still over the budget is returned with a warning. A table
from another device is used as it is (its predictions are all there is), and so is DSA's
allocation, which the gates learn during training against the prediction (the run report
shows its measured latency beside the predicted one).

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

TRIES = 4  # allocations at most: the first, and three tightened by the measured overshoot
AIM = 0.99  # retries aim 1% under the budget: one timing repeats within about 1.5% here
ROUNDS, INVOKES = 9, 20  # per check: about 400 invokes of each model


def measured_here(table: LatencyTable) -> bool:
    """Whether ``table`` was measured on this device with the runtime in use here."""
    return (table.device, table.runtime) == (this_device(), runtime_version())


def within_measured_latency(model: Any, budget: float | Mapping[str, float], resource: str,
                            resources: ResourceModel, fractions: Mapping[str, float],
                            allocate: Callable[[Mapping[str, float]], dict[str, np.ndarray]],
                            *, min_channels: int, round_to: np.ndarray,
                            exclude: Iterable[str] = (),
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
        progress: called with a line per check (None: quiet).

    Returns:
        The keep dict of the last allocation.
    """
    keep = allocate(fractions)
    if "latency" not in fractions or not measured_here(resources.latency.table):
        return keep
    table = resources.latency.table
    given = dict(budget) if isinstance(budget, Mapping) else {resource: budget}
    latency_ms = float(given["latency"]) if given["latency"] > 1 else None
    fewest = fewest_counts(resources.plan, min_channels, round_to)
    reachable = usage(resources, fewest, ["latency"])["latency"]
    target, tried = dict(fractions), []
    with tempfile.TemporaryDirectory() as directory:
        unpruned = _export(strip(model, keep={}, exclude=exclude), table.precision, directory,
                           "unpruned")  # without gates, if ``model`` is gated
        for attempt in range(1, TRIES + 1):
            full_ms, ms = _time(table, unpruned, _export(
                strip(model, keep, exclude=exclude), table.precision, directory, f"try_{attempt}"))
            limit = fractions["latency"] if latency_ms is None else latency_ms / full_ms
            met = ms / full_ms <= limit
            if progress:
                progress(f"latency: the allocation measures {ms:.3f} ms, {ms / full_ms:.3f}x "
                         f"the unpruned model's {full_ms:.3f} ms on this device ("
                         f"{'within' if met else 'over'} the budget's {limit:.3f}x)")
            if met:
                return keep
            predicted = resources.fractions(resources.plan.keep_ratios(keep), ["latency"])
            tried.append((predicted["latency"], ms / full_ms))
            tighter = max(reachable, _next_target(tried, AIM * limit))
            if attempt == TRIES or tighter >= tried[-1][0]:
                break
            target["latency"] = tighter
            if progress:
                progress(f"latency: allocating again to {tighter:.3f} of the predicted "
                         f"latency (attempt {attempt + 1} of {TRIES})")
            keep = allocate(target)
    warnings.warn(f"The allocation measures {ms / full_ms:.3f}x the unpruned model's latency "
                  f"on this device, over the budget's {limit:.3f}x, after {attempt} "
                  f"allocation(s) (the smallest reachable prediction is {reachable:.3f}). "
                  f"Timings vary with the machine's load: measure on a quiet machine, or give "
                  f"a lower budget.", stacklevel=3)
    return keep


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


def _next_target(tried: list[tuple[float, float]], aim: float) -> float:
    """The predicted-latency budget to allocate to next, from the ``(predicted, measured)``
    latency pairs of the allocations tried so far (all over): the last prediction scaled by
    ``aim / measured`` (so the next allocation differs from the last), or, from the
    second try on, the line through the last two pairs at ``aim`` (a prediction off by a
    fixed amount as well as a factor) where it tightens more, by at most twice as much."""
    (budget, measured) = tried[-1]
    scaled = budget * aim / measured
    if len(tried) > 1:
        (before, measured_before) = tried[-2]
        if measured_before > measured and before > budget:
            secant = budget + (aim - measured) * (before - budget) / (measured_before - measured)
            # at most twice the scaled step: timings too close together extrapolate far
            return min(scaled, max(secant, budget - 2 * (budget - scaled)))
    return scaled


def _export(model: Any, precision: str, directory: str, name: str) -> str:
    path = os.path.join(directory, f"{name}.tflite")
    Path(path).write_bytes(tflite_for_timing(model, precision))
    return path
