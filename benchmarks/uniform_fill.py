"""The uniform allocator under latency budgets, with and without filling what rounding leaves.

``dsa_tf.uniform_allocation`` keeps one ratio a in every group, each count rounded down to its
step (8 or 16 under a latency budget), then fills what that leaves of the budget one step at
a time, at most one step per group (:func:`dsa_tf.allocation.fitted_counts.fitted_counts`
with ``most_steps=1``). This script compares the two rules by a latency table alone, free of
timing noise: the rounding down alone (``most_steps=0``, the rule before the fill) and with
the fill, at latency budgets from 0.40 to 0.55 of the predicted latency, each with its
predicted latency ratio and FLOPs ratio, and beside them the FLOPs that uniform FLOPs budgets
keep at the same predicted latency (``frontier`` of ``benchmarks/latency_budget.py`` over a
sweep of FLOPs budgets from 0.20 to 0.69), rounded by hand to 16 (each group a multiple of
16) and with ``round_to`` 1, both with the fill. Counts only: nothing is exported or timed,
and channel importance does not enter (uniform keeps counts, whichever channels).

The table is the one ``benchmarks/latency_budget.py --tables DIR`` keeps (``DIR/MODEL_table.
json``), or, without ``--table``, one measured here (minutes). Run from the repository root
(seconds with a table):

    .venv/bin/python benchmarks/uniform_fill.py --model mobilenetv2 \
        --table /tmp/tables/mobilenetv2_table.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from dsa_tf.allocation.budget import group_steps, meets, usage, validated_budget  # noqa: E402
from dsa_tf.allocation.fitted_counts import fitted_counts  # noqa: E402
from dsa_tf.deploy.latency_table import LatencyTable  # noqa: E402
from dsa_tf.deploy.profile import profile_latency  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import build  # noqa: E402
from latency_budget import frontier  # noqa: E402

LATENCY_BUDGETS = np.arange(0.40, 0.5501, 0.01)
FLOPS_BUDGETS = np.arange(0.20, 0.6901, 0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("resnet56", "mobilenetv2"), default="mobilenetv2")
    parser.add_argument("--table", help="A latency table of the model (default: measure one).")
    args = parser.parse_args()
    model = build(args.model)
    table = LatencyTable.load(args.table) if args.table else profile_latency(model)
    with tempfile.TemporaryDirectory() as directory:
        # marked as measured elsewhere, so the allocations are not timed on this device
        path = os.path.join(directory, "table.json")
        dataclasses.replace(table, device="elsewhere", runtime="none").save(path)
        resources, _, steps = validated_budget(model, 0.5, "latency", 1, None, (), path)
    channels = np.array([g.channels for g in resources.plan.prunable])

    def counts(budget: dict, steps: np.ndarray, most_steps: int) -> np.ndarray:
        return fitted_counts(np.zeros(len(channels)), channels, 1, steps,
                             lambda kept: meets(resources, budget, kept), most_steps=most_steps)

    def cost(kept: np.ndarray) -> tuple[float, float]:
        used = usage(resources, kept, ["latency", "flops"])
        return used["latency"], used["flops"]

    def by_hand(round_to: int) -> list[tuple[float, float]]:
        """(predicted latency, FLOPs) of the FLOPs budgets this rounding reaches."""
        result, rounded = [], group_steps(resources.plan, round_to)
        for flops in FLOPS_BUDGETS:
            try:
                result.append(cost(counts({"flops": flops}, rounded, 1)))
            except ValueError:  # below the fewest channels this rounding allows
                continue
        return result

    sweeps = {round_to: by_hand(round_to) for round_to in (16, 1)}
    print(f"{args.model}: {np.sum(steps == 8)} groups step by 8, {np.sum(steps == 16)} by 16; "
          f"FLOPs at equal predicted latency")
    print("| latency budget | rule | predicted ratio | FLOPs | FLOPs x16 | FLOPs x1 |")
    print("|---:|---|---:|---:|---:|---:|")
    gaps = {0: [], 1: []}
    for budget in LATENCY_BUDGETS:
        for most_steps, rule in ((0, "rounded down"), (1, "filled")):
            latency, flops = cost(counts({"latency": budget}, steps, most_steps))
            x16, x1 = (frontier(sweeps[r], latency) for r in (16, 1))
            if x16 is not None:
                gaps[most_steps].append(flops - x16)
            print(f"| {budget:.2f} | {rule} | {latency:.3f} | {flops:.3f} | "
                  + " | ".join("none" if v is None else f"{v:.3f}" for v in (x16, x1)) + " |")
    for most_steps, rule in ((0, "rounded down"), (1, "filled")):
        gap = np.array(gaps[most_steps])
        print(f"{rule}: FLOPs minus x16's at equal predicted latency, mean {gap.mean():+.4f}, "
              f"range {gap.min():+.4f} to {gap.max():+.4f} ({len(gap)} budgets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
