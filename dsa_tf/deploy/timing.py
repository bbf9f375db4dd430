"""Invoke latency of ``.tflite`` models in LiteRT on this machine's CPU.

Single timings are noisy on shared CPUs, so latency is measured in rounds: a round is the
minimum of ``invokes`` consecutive invokes (the run least disturbed by other processes), and the
report gives the median and spread of the round minima. Several models are best compared in one
run with :func:`compare_tflite_latency`, which interleaves their rounds (in a rotating order),
so that a slow phase of the machine hits all of them alike. The minimum over the rounds
(``min_ms``) is the most repeatable statistic: six copies of one MobileNetV2 (224x224, 1
thread), timed side by side three times on a 2-core machine (15 rounds of 30 invokes each),
had minima within 1.5% of each other (8.44-8.58 ms) and medians within 18% (8.65-10.20 ms).
Latency tables and their calibration use it (:mod:`dsa_tf.deploy.latency_table`).

Inputs are random (fixed seed) in each input's dtype; the interpreter uses LiteRT's default
CPU delegate (XNNPACK) with ``threads`` threads.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(16, 16, 3))
    >>> path = dsa_tf.export_tflite(model, "/tmp/dsa_tf_latency_doctest.tflite").path
    >>> report = dsa_tf.benchmark_tflite(path, rounds=3, invokes=5, warmup=2)
    >>> 0 < report.min_ms <= report.median_ms <= report.p90_ms
    True
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dsa_tf.deploy import litert


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """Latency of one ``.tflite`` model (milliseconds, over the round minima).

    Attributes:
        path: the ``.tflite`` file.
        size_bytes: its size.
        threads: interpreter threads.
        rounds: number of rounds.
        invokes: invokes per round (a round's time is their minimum).
        median_ms, min_ms, p10_ms, p90_ms, max_ms: statistics of the round times.
    """

    path: str
    size_bytes: int
    threads: int
    rounds: int
    invokes: int
    median_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for humans."""
        return (f"{self.path}: median {self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, "
                f"p90 {self.p90_ms:.3f}, min {self.min_ms:.3f}) over {self.rounds} rounds of "
                f"min-of-{self.invokes} invokes, {self.threads} thread(s), "
                f"{self.size_bytes / 1024:.1f} KiB")


def benchmark_tflite(path: str | os.PathLike, *, threads: int = 1, rounds: int = 15,
                     invokes: int = 30, warmup: int = 10, seed: int = 0) -> LatencyReport:
    """Measures the invoke latency of one ``.tflite`` model.

    Args:
        path: the ``.tflite`` file.
        threads: interpreter threads.
        rounds: number of timed rounds.
        invokes: invokes per round; a round's time is their minimum.
        warmup: untimed invokes first.
        seed: seed of the random inputs.

    Returns:
        A :class:`LatencyReport`.
    """
    return compare_tflite_latency([path], threads=threads, rounds=rounds, invokes=invokes,
                                  warmup=warmup, seed=seed)[0]


def compare_tflite_latency(paths: Sequence[str | os.PathLike], *, threads: int = 1,
                           rounds: int = 15, invokes: int = 30, warmup: int = 10,
                           seed: int = 0) -> list[LatencyReport]:
    """Measures several ``.tflite`` models side by side, their rounds interleaved.

    Round ``r`` times the models in the order of ``paths`` rotated by ``r``, so no model is
    always first after another one's cache footprint. Arguments are as for
    :func:`benchmark_tflite`.

    Returns:
        One :class:`LatencyReport` per path, in the order of ``paths``.
    """
    if rounds < 1 or invokes < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"rounds, invokes and threads must be >= 1 and warmup >= 0; got "
                         f"{rounds}, {invokes}, {threads} and {warmup}.")
    paths = [os.fspath(p) for p in paths]
    rng = np.random.default_rng(seed)
    runs = []
    for path in paths:
        interpreter = litert.interpreter(path, threads)
        litert.set_random_inputs(interpreter, rng)
        for _ in range(warmup):
            interpreter.invoke()
        runs.append(interpreter)
    times: list[list[float]] = [[] for _ in paths]
    for r in range(rounds):
        for i in np.roll(np.arange(len(paths)), -r).tolist():
            invoke = runs[i].invoke
            best = float("inf")
            for _ in range(invokes):
                start = time.perf_counter()
                invoke()
                best = min(best, time.perf_counter() - start)
            times[i].append(best * 1e3)
    reports = []
    for path, values in zip(paths, times):
        p10, median, p90 = np.percentile(values, [10, 50, 90]).tolist()
        reports.append(LatencyReport(path, os.path.getsize(path), threads, rounds, invokes,
                                     median, min(values), p10, p90, max(values)))
    return reports
