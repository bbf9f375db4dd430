"""Latency tables on the full grid and with cheap operators on a coarse grid, side by side.

For each model (CIFAR ResNet-56 at 32x32, ``keras.applications.MobileNetV2`` at 224x224 and
``EfficientNetB0`` at 96x96, whose squeeze-excite convolutions at 1x1 spatial size have grids
of thousands of points; random weights, BatchNorms given random statistics: timing only), the
script measures the model's table on this machine twice with
``dsa_tf.deploy.profile.profile_latency``: with ``coarse_below=0`` (every signature on every
multiple of the step) and with the default (the signatures whose grids buy the least time per
point, together under 5% of the operators' time, on 1, half and full width), and reports for
each the seconds the table and its calibration took and the points measured. It then strips the
model to ``--variants`` random allocations (every group a random multiple of its step, from an
eighth to all of its channels), exports them to float32 ``.tflite`` and times them side by side
with the unpruned model (``dsa_tf.compare_tflite_latency``: interleaved rounds, the fastest
round counts), and prints each table's prediction error on every variant and the largest
difference between the two tables' predictions over 200 random allocations (no timing).

Run from the repository root (about 20 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/latency_grid.py
    .venv/bin/python benchmarks/latency_grid.py --models efficientnetb0 --variants 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf import _keras  # noqa: E402
from dsa_tf.deploy.latency_model import LatencyModel  # noqa: E402
from dsa_tf.deploy.profile import profile_latency, tflite_for_timing  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_zoo import randomize_batchnorms  # noqa: E402
from latency import build  # noqa: E402

MODELS = ("resnet56", "mobilenetv2", "efficientnetb0")


def model_named(name: str) -> Any:
    if name == "efficientnetb0":
        return _keras.default_keras().applications.EfficientNetB0(
            weights=None, input_shape=(96, 96, 3), classes=10)
    return build(name)


def random_ratios(plan: Any, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep ratios of a random allocation: each group a random multiple of its step, from an
    eighth of its channels (at least one step) to all of them."""
    channels = np.array([g.channels for g in plan.prunable])
    counts = [min(n, step * rng.integers(max(1, n // 8 // step), max(2, n // step + 1)))
              for n, step in zip(channels, steps)]
    return np.array(counts) / channels


def keep_of(plan: Any, ratios: np.ndarray) -> dict:
    return {g.name: range(round(r * g.channels)) for g, r in zip(plan.prunable, ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    for name in args.models:
        model = model_named(name)
        randomize_batchnorms(model, rng)
        plan = dsa_tf.analyze(model)
        tables = {}
        for label, options in (("full grid", {"coarse_below": 0.0}), ("coarse for cheap", {})):
            started = time.perf_counter()
            table = profile_latency(model, **options)
            seconds = time.perf_counter() - started
            points = sum(np.size(e["ms"]) for e in table.entries.values())
            tables[label] = (LatencyModel(plan, table), seconds, points)
            print(f"{name}, {label}: {len(table.entries)} signatures, {points} points, "
                  f"table and calibration {seconds:.0f} s", flush=True)
        full, coarse = (tables[label][0] for label in tables)
        steps = full.group_steps()
        print("  group steps by the full grid: " + ", ".join(
            f"{np.sum(steps == s)} groups by {s}" for s in sorted(set(steps.tolist()))) +
            f"; {np.sum(steps != coarse.group_steps())} groups step otherwise by the coarse")
        differences = []
        for _ in range(200):
            ratios = random_ratios(plan, steps, rng)
            differences.append(coarse.predict(ratios) / full.predict(ratios) - 1)
        print(f"  the two tables' predictions at 200 random allocations differ by "
              f"{np.mean(differences):+.2%} on average, {np.max(np.abs(differences)):.2%} at "
              f"most", flush=True)
        allocations = [np.ones(len(plan.prunable))] + [
            random_ratios(plan, steps, rng) for _ in range(args.variants)]
        with tempfile.TemporaryDirectory() as directory:
            paths, flops = [], []
            for i, ratios in enumerate(allocations):
                small = dsa_tf.strip(model, keep_of(plan, ratios)) if i else model
                flops.append(dsa_tf.count_flops(small) / dsa_tf.count_flops(model))
                paths.append(Path(directory) / f"{name}_{i}.tflite")
                paths[-1].write_bytes(tflite_for_timing(small, "float32"))
            reports = dsa_tf.compare_tflite_latency([str(p) for p in paths],
                                                    rounds=args.rounds, invokes=args.invokes)
        errors = {label: [] for label in tables}
        for i, (ratios, report) in enumerate(zip(allocations, reports)):
            cells = []
            for label, (latency, _, _) in tables.items():
                error = latency.predict(ratios) / report.min_ms - 1
                errors[label].append(error)
                cells.append(f"{latency.predict(ratios):.3f} ms ({error:+.1%})")
            print(f"  {'unpruned' if i == 0 else f'random {i}'}: FLOPs {flops[i]:.3f}, measured "
                  f"{report.min_ms:.3f} ms; predicted, full grid {cells[0]}, coarse {cells[1]}",
                  flush=True)
        for label, (_, seconds, points) in tables.items():
            rows.append((name, label, seconds, points, np.mean(np.abs(errors[label])),
                         np.max(np.abs(errors[label]))))
    print("\n| model | grid | table and calibration, s | points | mean abs. prediction error "
          "| largest |")
    print("|---|---|---:|---:|---:|---:|")
    for name, label, seconds, points, mean_error, max_error in rows:
        print(f"| {name} | {label} | {seconds:.0f} | {points} | {mean_error:.1%} | "
              f"{max_error:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
