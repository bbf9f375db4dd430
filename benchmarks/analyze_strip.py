"""Wall-clock speed of ``dsa_tf.analyze`` and ``dsa_tf.strip`` on large keras.applications models.

For each model (ResNet152 at its default 224x224 input, EfficientNetB7 at its default 600x600
input, both with ``weights=None``) this script measures, with ``time.perf_counter``:

* model construction (reported once, not part of the acceptance figures);
* ``dsa_tf.analyze(model)``;
* ``dsa_tf.strip(model, keep)`` where ``keep`` retains the first half of the channels of every
  prunable group (``range(max(1, c // 2))``). ``strip`` runs its own ``analyze`` internally, so
  its time includes one analysis plus the rebuild of the smaller model.

Each measurement is repeated ``--repeats`` times; the median and the minimum are reported. The
script also prints the layer, group and prunable-group counts, FLOPs and parameters before and
after stripping, and checks that ``count_flops(stripped) == round(plan.flops(ratios))`` and
``count_params(stripped) == round(plan.params(ratios))`` (the resource model predicts the
stripped model exactly). It ends with a markdown table and a PASS/FAIL line against the
acceptance target: analyze and strip each finish in under 30 s per model (median).

The Keras flavour is whatever ``tf.keras`` resolves to: Keras 3 by default, tf_keras with
``TF_USE_LEGACY_KERAS=1``.

Run from the repository root:

    .venv/bin/python benchmarks/analyze_strip.py
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/analyze_strip.py
    .venv/bin/python benchmarks/analyze_strip.py --models ResNet152 --repeats 5

The exit status is 0 only when every model passes both the exactness checks and the target.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dsa_tf  # noqa: E402

MODELS: dict[str, Callable[[], Any]] = {
    "ResNet152": lambda: tf.keras.applications.ResNet152(weights=None),
    "EfficientNetB7": lambda: tf.keras.applications.EfficientNetB7(weights=None),
}
TARGET_SECONDS = 30.0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    """Calls ``fn`` ``repeats`` times; returns the last result and the wall-clock times."""
    times = []
    result = None
    for _ in range(repeats):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def fmt_times(times: list[float]) -> str:
    return (f"median {statistics.median(times):.2f} s, min {min(times):.2f} s "
            f"({', '.join(f'{t:.2f}' for t in times)})")


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def bench(name: str, repeats: int) -> dict[str, Any]:
    """Benchmarks one model; returns a row for the summary table."""
    row: dict[str, Any] = {"model": name, "ok": False}
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    model = MODELS[name]()
    print(f"construction: {time.perf_counter() - start:.2f} s (not counted)")
    row["layers"] = len(model.layers)
    row["flops_before"] = dsa_tf.count_flops(model)
    row["params_before"] = dsa_tf.count_params(model)
    print(f"input shape: {tuple(model.input_shape)}, layers: {row['layers']}")

    try:
        plan, analyze_times = timed(lambda: dsa_tf.analyze(model), repeats)
    except Exception:
        print(f"FAILED in analyze:\n{traceback.format_exc()}", flush=True)
        row["error"] = "analyze"
        return row
    row["groups"], row["prunable"] = len(plan.groups), len(plan.prunable)
    row["analyze"] = analyze_times
    print(f"groups: {row['groups']}, prunable: {row['prunable']}")
    print(f"analyze: {fmt_times(analyze_times)}", flush=True)

    keep = {g.name: range(max(1, g.channels // 2)) for g in plan.prunable}
    ratios = plan.keep_ratios(keep)
    try:
        stripped, strip_times = timed(lambda: dsa_tf.strip(model, keep=keep), repeats)
    except Exception:
        print(f"FAILED in strip:\n{traceback.format_exc()}", flush=True)
        row["error"] = "strip"
        return row
    row["strip"] = strip_times
    print(f"strip:   {fmt_times(strip_times)}", flush=True)

    row["flops_after"] = dsa_tf.count_flops(stripped)
    row["params_after"] = dsa_tf.count_params(stripped)
    predicted_flops = round(plan.flops(ratios))
    predicted_params = round(plan.params(ratios))
    model_flops = round(plan.flops(np.ones(len(plan.prunable))))
    model_params = round(plan.params(np.ones(len(plan.prunable))))
    print(f"FLOPs:  {row['flops_before']} -> {row['flops_after']} "
          f"(plan predicts {model_flops} -> {predicted_flops})")
    print(f"params: {row['params_before']} -> {row['params_after']} "
          f"(plan predicts {model_params} -> {predicted_params})")
    checks = {
        "count_flops(stripped) == round(plan.flops(ratios))":
            row["flops_after"] == predicted_flops,
        "count_params(stripped) == round(plan.params(ratios))":
            row["params_after"] == predicted_params,
        "count_flops(model) == round(plan.flops(1))": row["flops_before"] == model_flops,
        "count_params(model) == round(plan.params(1))": row["params_before"] == model_params,
    }
    for text, ok in checks.items():
        print(f"{'OK' if ok else 'MISMATCH'}: {text}")
    row["exact"] = all(checks.values())
    row["ok"] = row["exact"] and all(
        statistics.median(row[k]) < TARGET_SECONDS for k in ("analyze", "strip"))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | layers | groups (prunable) | analyze s (median) | strip s (median) "
        "| FLOPs before -> after | params before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['layers']} | {r.get('groups', '-')} "
                         f"| failed in {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['groups']} ({r['prunable']}) "
            f"| {statistics.median(r['analyze']):.2f} | {statistics.median(r['strip']):.2f} "
            f"| {human(r['flops_before'])} -> {human(r['flops_after'])} "
            f"| {human(r['params_before'])} -> {human(r['params_after'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to benchmark (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repetitions of analyze and strip (default: 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    keras_root = tf.keras.layers.Layer.__module__.split(".")[0]  # "keras" or "tf_keras"
    flavour = "tf_keras" if keras_root == "tf_keras" else "Keras 3"
    version = importlib.import_module(keras_root).__version__
    print(f"TensorFlow {tf.__version__}, {flavour} {version} (tf.keras), "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"repeats: {args.repeats}, target: analyze and strip each < {TARGET_SECONDS:.0f} s")

    rows = []
    for name in args.models:
        rows.append(bench(name, args.repeats))
        gc.collect()

    print(f"\n{table(rows)}\n")
    for r in rows:
        if "error" in r:
            print(f"FAIL {r['model']}: error in {r['error']}")
            continue
        a, s = statistics.median(r["analyze"]), statistics.median(r["strip"])
        print(f"{'PASS' if r['ok'] else 'FAIL'} {r['model']}: analyze {a:.2f} s, "
              f"strip {s:.2f} s (target < {TARGET_SECONDS:.0f} s each), "
              f"counts {'exact' if r['exact'] else 'MISMATCH'}")
    passed = all(r["ok"] for r in rows)
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
