"""LiteRT latency of stripped models against their FLOPs: CIFAR ResNets and MobileNetV2.

For each model (CIFAR ResNet-20 and ResNet-56 at 32x32, ``keras.applications.MobileNetV2``
at 224x224 with logits outputs; random weights, BatchNorms given random statistics), the
script builds stripped variants at FLOPs ratios of 75%, 50% and 33%: every prunable group keeps
the same share of its channels, the channels with the largest L1 norm of their producing
kernels (summed over the group's producers), at the largest uniform keep ratio (found by
bisection) whose FLOPs, from ``plan.flops`` (exact at integer channel counts), stay within the
target. Two more variants round every kept count to a multiple of 8 or of 16 (at least one
multiple, at most all the group's channels), again the largest configuration within the
target, as ``prune_to_budget(..., round_to=N)`` keeps within its budget; rounding makes the
FLOPs ratio jump, so these variants can sit well below their target (the table gives the exact
ratio). A rounded variant whose smallest configuration exceeds its target is left out, with a
note.

Every variant and the unpruned model are exported with ``dsa_tf.export_tflite`` as float32 and
as int8 (full integer, float32 inputs and outputs, 32 random-normal calibration examples; every
export is verified against its Keras model), then timed side by side in one
``dsa_tf.compare_tflite_latency`` run per model and type: 1 thread, XNNPACK, interleaved rounds
in a rotating order, each round the minimum of ``--invokes`` invokes, median over
``--rounds`` rounds. The table gives every variant's FLOPs ratio, its median latency relative
to the unpruned model's (same run), and its file size relative to the unpruned file.

Acceptance check, printed as PASS/FAIL per variant: at 50% FLOPs the stripped ResNet-56
float32 latency is at most 0.6x the unpruned model's.

Run from the repository root (about 20 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/latency.py
    .venv/bin/python benchmarks/latency.py --models resnet56 --rounds 21 --invokes 60
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
from dsa_tf import _keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_zoo import randomize_batchnorms  # noqa: E402

TARGETS = (0.75, 0.5, 0.33)
ROUNDINGS = (1, 8, 16)
ACCEPT_RATIO = 0.6
MODELS = {"resnet20": 32, "resnet56": 32, "mobilenetv2": 224}


def build(name: str) -> Any:
    keras = _keras.default_keras()
    if name == "mobilenetv2":
        # Logits: an int8 softmax of random features is nearly uniform and fails verification.
        return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3),
                                              classifier_activation=None)
    return dsa_tf.models.cifar_resnet(int(name[len("resnet"):]))


def importance(model: Any, group: dsa_tf.Group) -> np.ndarray:
    """L1 norm of every channel's producing kernels, summed over the group's producers."""
    total = np.zeros(group.channels)
    for producer in group.producers:
        kernel = np.abs(model.get_layer(producer).get_weights()[0])
        total += kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)
    return total


def kept_counts(channels: np.ndarray, ratio: float, multiple: int) -> np.ndarray:
    counts = np.maximum(1, np.round(ratio * channels))
    if multiple > 1:
        counts = np.maximum(multiple, multiple * np.round(counts / multiple))
    return np.minimum(counts, channels).astype(int)


def uniform_keep(plan: dsa_tf.ChannelPlan, channels: np.ndarray, target: float,
                 multiple: int) -> np.ndarray | None:
    """Kept counts at the largest uniform ratio whose FLOPs ratio is within ``target``, or
    None if even the smallest configuration exceeds the target."""
    full = plan.flops(np.ones(len(channels)))

    def flops_ratio(ratio: float) -> float:
        return plan.flops(kept_counts(channels, ratio, multiple) / channels) / full

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if flops_ratio(middle) <= target else (low, middle)
    if flops_ratio(low) > target:
        return None
    return kept_counts(channels, low, multiple)


def variants(model: Any) -> list[tuple[str, float, str, Any]]:
    """(name, FLOPs ratio, widths, stripped model) for every target and rounding."""
    plan = dsa_tf.analyze(model)
    groups = plan.prunable
    channels = np.array([g.channels for g in groups], dtype=float)
    scores = [importance(model, g) for g in groups]
    full = plan.flops(np.ones(len(groups)))
    result = []
    for target in TARGETS:
        for multiple in ROUNDINGS:
            counts = uniform_keep(plan, channels, target, multiple)
            if counts is None:
                print(f"{model.name}: no uniform ratio rounded to {multiple} reaches "
                      f"{target:.0%} FLOPs; variant left out.")
                continue
            keep = {g.name: np.sort(np.argsort(-s, kind="stable")[:k])
                    for g, s, k in zip(groups, scores, counts) if k < g.channels}
            ratio = plan.flops(counts / channels) / full
            widths = sorted(set(counts.tolist()))
            shown = ",".join(map(str, widths)) if len(widths) <= 6 else \
                f"{widths[0]}..{widths[-1]}"
            label = f"{target:.0%} FLOPs" + (f", x{multiple}" if multiple > 1 else "")
            result.append((label, ratio, shown, dsa_tf.strip(model, keep)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    verdicts = []
    rows = []
    loads = []
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models:
            model = build(name)
            randomize_batchnorms(model, rng)
            size = MODELS[name]
            calibration = list(rng.normal(size=(32, 1, size, size, 3)).astype("float32"))
            entries = [("unpruned", 1.0, "", model)] + variants(model)
            for quantize in (None, "int8"):
                paths = []
                for i, (_, _, _, variant) in enumerate(entries):
                    report = dsa_tf.export_tflite(
                        variant, os.path.join(directory, f"{name}_{i}_{quantize}.tflite"),
                        quantize=quantize, representative_data=calibration)
                    paths.append(report.path)
                loads.append(os.getloadavg()[0])
                reports = dsa_tf.compare_tflite_latency(paths, threads=args.threads,
                                                        rounds=args.rounds, invokes=args.invokes)
                loads.append(os.getloadavg()[0])
                base = reports[0]
                for (label, ratio, widths, _), report in zip(entries, reports):
                    rows.append((name, quantize or "float32", label, widths, ratio,
                                 report.median_ms, report.median_ms / base.median_ms,
                                 report.p10_ms / base.median_ms, report.p90_ms / base.median_ms,
                                 report.size_bytes / base.size_bytes))
                    print(f"{name} {quantize or 'float32'} {label}: {report.summary()}",
                          flush=True)
                    if name == "resnet56" and quantize is None and label.startswith("50%"):
                        verdicts.append((label, report.median_ms / base.median_ms))
    print(f"\nTotal {time.perf_counter() - start_all:.0f} s; 1-minute load average around the "
          f"timings: {min(loads):.2f}-{max(loads):.2f}; {args.threads} thread(s), "
          f"{args.rounds} rounds of min-of-{args.invokes} invokes.\n")
    print("| model | type | variant | kept widths | FLOPs ratio | median ms | latency ratio "
          "(p10-p90) | size ratio |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, kind, label, widths, ratio, median, lat, p10, p90, size in rows:
        print(f"| {name} | {kind} | {label} | {widths} | {ratio:.3f} | {median:.3f} | "
              f"{lat:.2f} ({p10:.2f}-{p90:.2f}) | {size:.2f} |")
    print()
    for label, ratio in verdicts:
        print(f"ResNet-56 float32, {label}: latency ratio {ratio:.2f} "
              f"{'PASS' if ratio <= ACCEPT_RATIO else 'FAIL'} (target <= {ACCEPT_RATIO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
