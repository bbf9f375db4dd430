"""Latency budgets: models pruned to half their measured LiteRT latency, predicted vs measured.

For each model (CIFAR ResNet-56 at 32x32 and ``keras.applications.MobileNetV2`` at 224x224
with logits outputs; random weights, BatchNorms given random statistics: timing only), the
script:

1. measures the model's latency table on this machine with
   ``dsa_tf.deploy.profile.profile_latency`` (``--precision``, float32 by default;
   ``--threads`` threads; the time it takes is reported);
2. prunes it to ``--budget`` (50%) of its latency with ``dsa_tf.uniform_allocation(model,
   0.5, resource="latency", latency_table=...)`` (one keep ratio for every group, the largest
   the table predicts within the budget) and with ``dsa_tf.magnitude_allocation`` (a global
   threshold on the filters' norms, each step weighted by the FLOPs it removes per
   millisecond it saves, which trades between groups); kept counts are multiples
   of each group's step in the table (8, or 16 where the measured times show tiles of 16;
   the script prints how many groups step by each). The table being measured here, each
   allocator times its result against the unpruned model and allocates again while it
   measures over 97% of the budget or under 93% of it
   (:mod:`dsa_tf.allocation.measured_latency`; its lines are printed);
3. builds FLOPs-budgeted comparisons with the same allocator as each latency arm: at the
   FLOPs the arm kept and a sweep of lower FLOPs budgets, with ``round_to`` 1 (the default of
   a FLOPs budget) and 16 (rounding by hand, as BENCHMARKS.md "LiteRT latency" did), to find
   the FLOPs a FLOPs budget has to give up to be as fast as the latency arm (where a budget
   is below what a rounding reaches, the fewest channels that rounding allows: "fewest");
4. exports every variant and the unpruned model to ``.tflite`` in that precision (verified;
   int8: full integer, calibrated on 32 random-normal inputs, as benchmarks/latency.py) and times
   them side by side in one ``dsa_tf.compare_tflite_latency`` run (interleaved rounds, each
   the minimum of ``--invokes`` invokes; a model's latency is its fastest of ``--rounds``
   rounds, which repeats within about 1.5% here where the median of the rounds varies by up
   to 15%: :mod:`dsa_tf.deploy.timing`; ratios of the medians are printed beside), with
   the latency the table predicts for each and the ratio it predicts (over its prediction
   for the unpruned model), which a drift of the whole machine between the table's
   measurement and this timing does not move (BENCHMARKS.md, run 10);
5. prints what the table alone says, free of timing noise: the most FLOPs a greedy search
   finds on the table's steps within the budget (:func:`table_capacity`, an estimate of the
   ceiling an allocator can reach by the table, not a proven bound), and for each arm the
   FLOPs the FLOPs budgets keep at the arm's predicted latency ratio.

Acceptance, printed as PASS/FAIL: the latency arm's measured latency is at most 1.04 times
the budget (0.52x the unpruned model's at 0.5), its prediction (and the unpruned model's) is
within 10% of the measurement, and ResNet-56's table takes under 3 minutes; and capacity at
equal latency: the arm keeps more FLOPs than the FLOPs budgets of the same allocator (either
rounding) keep at its measured latency (:func:`frontier`: the best variant as fast,
interpolated towards the next slower one).

Run from the repository root (about 40 minutes on 2 CPU cores, most of it MobileNetV2):

    .venv/bin/python benchmarks/latency_budget.py
    .venv/bin/python benchmarks/latency_budget.py --models resnet56 --rounds 21
    .venv/bin/python benchmarks/latency_budget.py --models mobilenetv2 --precision int8 \
        --budget 0.7
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf.allocation.budget import fewest_counts, usage  # noqa: E402
from dsa_tf.allocation.resources import ResourceModel  # noqa: E402
from dsa_tf.deploy.latency_model import LatencyModel  # noqa: E402
from dsa_tf.deploy.profile import profile_latency  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_zoo import randomize_batchnorms  # noqa: E402
from latency import build  # noqa: E402

MODELS = ("resnet56", "mobilenetv2")
MAX_OVER = 1.04  # the measured latency ratio may be this much over the budget (0.52x at 0.5)
MAX_ERROR = 0.10
MAX_TABLE_SECONDS = {"resnet56": 180}
# FLOPs budgets, as fractions of a latency arm's FLOPs: above it too, so that the FLOPs-budgeted
# variants bracket the arm's measured latency
SWEEP = (1.15, 1.1, 1.05, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6)


def flops_ratio(model: Any, keep: dict) -> float:
    return dsa_tf.count_flops(dsa_tf.strip(model, keep)) / dsa_tf.count_flops(model)


def variants(model: Any, table_path: str, budget: float) -> list[tuple[str, int, dict]]:
    """(label, round_to, keep) of the latency arms (round_to 0: the table's steps) and, for
    each allocator, of the FLOPs-budgeted comparisons with the same allocator: at the FLOPs
    its latency arm kept and below, with round_to 1 and 16; where a FLOPs budget is below
    what a rounding reaches, the fewest channels it allows instead (every allocator's only
    answer at that rounding's smallest FLOPs)."""
    plan = dsa_tf.analyze(model)
    result = []
    for allocate in (dsa_tf.uniform_allocation, dsa_tf.magnitude_allocation):
        method = allocate.__name__.split("_")[0]
        keep = allocate(model, budget, resource="latency", latency_table=table_path)
        result.append((f"latency {budget:.0%} {method}", 0, keep))
        kept_flops = flops_ratio(model, keep)
        for round_to in (1, 16):
            unreachable = False
            for share in SWEEP:
                target = share * kept_flops
                try:
                    keep = allocate(model, target, round_to=round_to)
                except ValueError as error:  # below what this rounding reaches
                    print(f"  FLOPs {target:.3f} x{round_to} {method}: {error}")
                    unreachable = True
                    continue
                result.append((f"FLOPs {target:.3f} x{round_to} {method}", round_to, keep))
            if unreachable:
                fewest = fewest_counts(plan, 1, round_to)
                keep = {g.name: np.arange(n) for g, n in zip(plan.prunable, fewest)}
                result.append((f"FLOPs {flops_ratio(model, keep):.3f} x{round_to} fewest "
                               f"{method}", round_to, keep))
    return result


def table_capacity(resources: ResourceModel, budget: float, steps: np.ndarray
                   ) -> tuple[float, float]:
    """(predicted latency ratio, FLOPs ratio) of the most FLOPs a greedy search finds within
    ``budget`` of the table's predicted latency, at counts on the table's ``steps`` (channel
    importance ignored: an estimate of the ceiling of capacity by the table, not a proven
    bound, and not an allocator to prune with). From the full width it takes the step (any
    group, to any lower multiple of its step) that gives up the fewest FLOPs per latency
    saved until the prediction is within the budget, then gives back the step that adds the
    most FLOPs while it stays within."""
    channels = np.array([g.channels for g in resources.plan.prunable])
    fewest = fewest_counts(resources.plan, 1, steps)

    def cost(counts: np.ndarray) -> tuple[float, float]:
        used = usage(resources, counts, ["latency", "flops"])
        return used["latency"], used["flops"]

    def moves(counts: np.ndarray, down: bool):
        for k, (c, step) in enumerate(zip(counts, steps)):
            targets = (range((c - 1) // step * step, fewest[k] - 1, -step) if down
                       else range(c + step, channels[k] + step, step))
            for n in targets:
                moved = counts.copy()
                moved[k] = min(n, channels[k])
                yield moved, cost(moved)

    counts = channels.copy()
    latency, flops = cost(counts)
    while latency > budget:  # fewest FLOPs lost per latency saved
        counts, (latency, flops) = min(
            ((m, (lat, f)) for m, (lat, f) in moves(counts, True) if lat < latency),
            key=lambda item: (flops - item[1][1]) / (latency - item[1][0]))
    while True:  # give back what fits
        fits = [(m, c) for m, c in moves(counts, False) if c[0] <= budget]
        if not fits:
            return latency, flops
        counts, (latency, flops) = max(fits, key=lambda item: item[1][1])


def export_options(model: Any, precision: str) -> dict:
    """``export_tflite`` arguments for ``precision``: int8 calibrated on 32 random-normal
    inputs of the model's shape (timing only)."""
    if precision == "float32":
        return {}
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    rng = np.random.default_rng(1)
    return {"quantize": "int8", "representative_data": [
        rng.normal(size=(1,) + shape).astype("float32") for _ in range(32)]}


def frontier(points: list[tuple[float, float]], ms: float) -> float | None:
    """The most FLOPs the FLOPs-budgeted variants ``points`` ((measured ms, FLOPs ratio)) keep
    at latency ``ms``: the best variant at most that fast, or, between it and the next slower
    variant that keeps more, the linear interpolation at ``ms`` (None: none is as fast)."""
    faster = [(t, f) for t, f in points if t <= ms]
    if not faster:
        return None
    best = max(faster, key=lambda p: p[1])
    slower = [(t, f) for t, f in points if t > ms and f > best[1]]
    if not slower:
        return best[1]
    t1, f1 = min(slower)
    return best[1] + (f1 - best[1]) * (ms - best[0]) / (t1 - best[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="float32", choices=("float32", "int8"))
    parser.add_argument("--tables", default=None,
                        help="Directory to keep the measured tables in (default: temporary).")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    verdicts, rows = [], []
    with tempfile.TemporaryDirectory() as directory:
        tables = args.tables or directory
        os.makedirs(tables, exist_ok=True)
        for name in args.models:
            model = build(name)
            randomize_batchnorms(model, rng)
            started = time.perf_counter()
            table = profile_latency(model, precision=args.precision, threads=args.threads)
            table_seconds = time.perf_counter() - started
            table_path = os.path.join(tables, f"{name}_table.json")
            table.save(table_path)
            points = sum(len(e["channels_in"]) * len(e["channels_out"])
                         for e in table.entries.values())
            print(f"{name}: table of {len(table.entries)} signatures, {points} points, "
                  f"{table_seconds:.0f} s", flush=True)
            plan = dsa_tf.analyze(model)
            latency = LatencyModel(plan, table)
            steps = latency.group_steps()
            print("  group steps: " + ", ".join(
                f"{np.sum(steps == s)} groups by {s}" for s in sorted(set(steps.tolist()))))
            ceiling = table_capacity(ResourceModel(plan, table_path), args.budget, steps)
            print(f"  by the table, the FLOPs a greedy search for them keeps on its steps "
                  f"within the budget (importance ignored): {ceiling[1]:.3f} at a predicted "
                  f"{ceiling[0]:.3f}", flush=True)
            entries = [("unpruned", 1, {})] + variants(model, table_path, args.budget)
            paths = []
            for i, (_, _, keep) in enumerate(entries):
                small = dsa_tf.strip(model, keep) if keep else model
                paths.append(dsa_tf.export_tflite(
                    small, os.path.join(directory, f"{name}_{i}.tflite"),
                    **export_options(model, args.precision)).path)
            reports = dsa_tf.compare_tflite_latency(paths, threads=args.threads,
                                                    rounds=args.rounds, invokes=args.invokes)
            base, base_median = reports[0].min_ms, reports[0].median_ms  # see the docstring
            base_predicted = latency.predict(np.ones(len(plan.prunable)))
            measured: dict[str, tuple[int, float, float]] = {}
            predicted_ratios: dict[str, float] = {}
            for (label, round_to, keep), report in zip(entries, reports):
                ratios = plan.keep_ratios(keep) if keep else np.ones(len(plan.prunable))
                predicted = latency.predict(ratios)
                flops = flops_ratio(model, keep) if keep else 1.0
                error = predicted / report.min_ms - 1
                rows.append((name, label, flops, report.min_ms, report.min_ms / base,
                             report.median_ms / base_median, predicted, error,
                             predicted / base_predicted))
                measured[label] = (round_to, flops, report.min_ms)
                predicted_ratios[label] = predicted / base_predicted
                print(f"  {label}: FLOPs {flops:.3f}, measured {report.min_ms:.3f} ms "
                      f"({report.min_ms / base:.3f}x), predicted {predicted:.3f} ms "
                      f"({error:+.1%})", flush=True)
                if label == "unpruned" or label.startswith("latency"):
                    verdicts.append((f"{name} {label}: prediction error {error:+.1%}",
                                     abs(error) <= MAX_ERROR))
                if label.startswith("latency"):
                    limit = MAX_OVER * args.budget
                    verdicts.append((f"{name} {label}: measured latency ratio "
                                     f"{report.min_ms / base:.3f} (<= {limit:.3f})",
                                     report.min_ms / base <= limit))
            if name in MAX_TABLE_SECONDS:
                verdicts.append((f"{name} table: {table_seconds:.0f} s "
                                 f"(< {MAX_TABLE_SECONDS[name]} s)",
                                 table_seconds < MAX_TABLE_SECONDS[name]))
            for arm, (_, arm_flops, arm_ms) in measured.items():
                if not arm.startswith("latency"):
                    continue
                method = arm.split()[-1]
                for round_to in (1, 16):
                    labels = [label for label, (r, _, _) in measured.items()
                              if label.startswith("FLOPs") and label.endswith(method)
                              and r == round_to]
                    by_table = frontier(sorted((predicted_ratios[label], measured[label][1])
                                               for label in labels), predicted_ratios[arm])
                    print(f"  by the table's predictions, at {arm}'s predicted "
                          f"{predicted_ratios[arm]:.3f}, FLOPs budgets x{round_to} keep " + (
                              f"FLOPs {by_table:.3f}" if by_table is not None
                              else "? (none predicted as fast)"))
                    points = sorted((measured[label][2], measured[label][1]) for label in labels)
                    at_arm = frontier(points, arm_ms)
                    print(f"  at the latency of {arm} ({arm_ms:.3f} ms, FLOPs {arm_flops:.3f}), "
                          f"FLOPs budgets x{round_to} keep " + (
                              f"FLOPs {at_arm:.3f}" if at_arm is not None
                              else "? (no variant as fast)"), flush=True)
                    verdicts.append((
                        f"{name} {arm}: capacity at equal latency, FLOPs {arm_flops:.3f} "
                        f"against {at_arm if at_arm is not None else 0:.3f} for FLOPs budgets "
                        f"x{round_to}", at_arm is None or arm_flops > at_arm))
    print("\n| model | variant | FLOPs ratio | measured ms | latency ratio (of medians) | "
          "predicted ms | prediction error | predicted ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, label, flops, fastest, ratio, median_ratio, predicted, error, pratio in rows:
        print(f"| {name} | {label} | {flops:.3f} | {fastest:.3f} | {ratio:.3f} "
              f"({median_ratio:.3f}) | {predicted:.3f} | {error:+.1%} | {pratio:.3f} |")
    print()
    for text, passed in verdicts:
        print(f"{'PASS' if passed else 'FAIL'} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
