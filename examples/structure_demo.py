"""The structural half of dsa_tf on a CIFAR ResNet-56: groups, costs, a real strip, parity.

What it shows:
1. the channel groups DSA prunes (residual stages share one group; each block's first conv
   is its own), and the groups that cannot be pruned and why;
2. FLOPs and params of the model, and of a configuration keeping a fraction of every prunable
   group's channels (chosen by filter L1 norm), predicted by the quadratic resource model;
3. the stripped model: a plain, smaller Keras model whose counted FLOPs/params match the
   prediction exactly and whose outputs match the masked original (parity check).

Runs in about 30 s on 2 CPU cores, no data needed (random weights and inputs):

    python examples/structure_demo.py --depth=56 --keep=0.5
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

import dsa_tf

DEPTH = flags.DEFINE_integer("depth", 56, "CIFAR ResNet depth (20, 32, 44, 56, 110).")
KEEP = flags.DEFINE_float("keep", 0.5, "Fraction of channels kept in every prunable group.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for the random weights and inputs.")


def l1_keep(model, plan: dsa_tf.ChannelPlan, fraction: float) -> dict[str, np.ndarray]:
    """Per prunable group, the channels with the largest summed filter L1 norm."""
    keep = {}
    for group in plan.prunable:
        norms = np.zeros(group.channels)
        for name in group.producers:
            kernel = model.get_layer(name).kernel.numpy()
            norms += np.abs(kernel).reshape(-1, group.channels).sum(axis=0)
        k = max(1, round(fraction * group.channels))
        keep[group.name] = np.sort(np.argsort(-norms, kind="stable")[:k])
    return keep


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(SEED.value)
    model = dsa_tf.models.cifar_resnet(DEPTH.value)
    started = time.perf_counter()
    plan = dsa_tf.analyze(model)
    print(f"{model.name}: {len(plan.groups)} channel groups, {len(plan.prunable)} prunable "
          f"(analysed in {time.perf_counter() - started:.2f} s)\n")
    print(f"{'group':<22} {'channels':>8} {'producers':>9} {'layers':>6}  prunable")
    for group in plan.groups:
        status = "yes" if group.prunable else f"no: {group.reason}"
        print(f"{group.name:<22} {group.channels:>8} {len(group.producers):>9} "
              f"{len(group.layers):>6}  {status}")

    keep = l1_keep(model, plan, KEEP.value)
    ratios = plan.keep_ratios(keep)
    started = time.perf_counter()
    small = dsa_tf.strip(model, keep)
    strip_seconds = time.perf_counter() - started

    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    reference = dsa_tf.masked_call(model, keep, x)[0]
    error = np.abs(np.asarray(small(x)) - reference).max() / np.abs(reference).max()

    rows = [
        ("FLOPs", dsa_tf.count_flops(model), plan.flops(ratios), dsa_tf.count_flops(small)),
        ("params", dsa_tf.count_params(model), plan.params(ratios), dsa_tf.count_params(small)),
    ]
    print(f"\nKeeping {KEEP.value:.0%} of every prunable group (by filter L1 norm); "
          f"stripped in {strip_seconds:.2f} s\n")
    print(f"{'':<7} {'original':>14} {'predicted':>14} {'stripped':>14} {'ratio':>7}")
    for name, before, predicted, after in rows:
        print(f"{name:<7} {before:>14,} {round(predicted):>14,} {after:>14,} "
              f"{after / before:>7.3f}")
    exact = all(round(predicted) == after for _, _, predicted, after in rows)
    print(f"\nprediction exact: {exact}")
    print(f"parity (max |stripped - masked original| / max |output|): {error:.2e} "
          f"({'OK' if error <= 1e-5 else 'FAILED'}, target <= 1e-5)")
    if not exact or error > 1e-5:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
