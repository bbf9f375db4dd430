"""What DSA's keep-ratio gradients say per group: mean, spread and signal-to-noise per alpha batch.

The Theta step of an ADMM iteration moves every group's keep-ratio logit by the gradient
``dL/dTheta_k`` of one alpha batch (:func:`dsa_tf.allocation.keep_gradients.keep_ratio_gradients`).
This script measures those gradients on a trained network of the allocation benchmark
(``benchmarks/allocation.py``: the same cached pre-trained network, data subset and alpha
split), every group at the same keep ratio, over ``--batches`` alpha batches each drawn with
``--repeats`` fresh Bernoulli masks, and prints per group the mean, the standard deviation per
batch and their ratio (the signal-to-noise of one Theta step), for each combination of:

* the signal (``--signals``): the straight-through gradient with the BatchNorm statistics of
  the batch (``batch``: training mode, the paper's; ``DSACallback(theta_batch_statistics=True)``)
  or the moving ones (``moving``: inference mode under the sampled masks;
  ``theta_batch_statistics=False``), or central differences of the training-mode loss in
  each group's keep ratio (``differences``: :mod:`dsa_tf.allocation.keep_differences`);
* the keep ratio every group is set to (``--keep_ratios``; 0.993 is DSA's start, Theta = 5);
* the steepness beta2 (``--beta2``; 0.05 is DSA's start).

The last column, "largest/smallest", is the ratio of the largest to the smallest |mean| over
the groups: a group whose gradient is orders of magnitude below the others' is steered by
noise (the Theta optimiser normalises each group's step).

    .venv/bin/python benchmarks/keep_gradients.py --data_dir=../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import allocation  # noqa: E402  (benchmarks/allocation.py: the network, data and cache)
import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf import _keras  # noqa: E402
from dsa_tf.allocation.gated_model import gates_of, resample_masks  # noqa: E402
from dsa_tf.allocation.gates import STOCHASTIC  # noqa: E402
from dsa_tf.allocation.keep_differences import keep_ratio_differences  # noqa: E402
from dsa_tf.allocation.keep_gradients import keep_ratio_gradients  # noqa: E402

SIGNALS = ("batch", "moving", "differences")


def measure(gated: object, batches: list, repeats: int, keep_ratio: float, beta2: float,
            signal: str, loss: object) -> np.ndarray:
    """dL/dTheta per (batch and mask draw, group), every group at ``keep_ratio``, by the
    ``signal``: "batch" or "moving" (the straight-through gradient with batch or moving
    BatchNorm statistics) or "differences" (central differences of the loss)."""
    gates = gates_of(gated)
    dsa_tf.set_keep_ratios(gated, {gate.group: keep_ratio for gate in gates})
    for gate in gates:
        gate.mode.assign(STOCHASTIC)
        gate.beta2.assign(beta2)
    rows = []
    for _, (x, y) in itertools.product(range(repeats), batches):
        resample_masks(gated)
        grads = (keep_ratio_differences(gated, loss, x, y) if signal == "differences" else
                 keep_ratio_gradients(gated, loss, x, y, batch_statistics=signal == "batch"))
        rows.append([float(g) for g in grads])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR"))
    parser.add_argument("--arch", default="resnet", choices=sorted(allocation.RESOURCES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep_ratios", type=float, nargs="+", default=[0.993, 0.5])
    parser.add_argument("--beta2", type=float, nargs="+", default=[0.05, 50.0])
    parser.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=SIGNALS)
    parser.add_argument("--depth", type=int, default=14)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--train_examples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/dsa_tf/benchmarks"))
    args = parser.parse_args()

    keras = _keras.default_keras()
    splits = dsa_tf.data.load("cifar10", data_dir=args.data_dir, batch_size=128,
                              train_examples=args.train_examples or None, seed=args.seed,
                              image_size=args.image_size)
    model = allocation.pretrained(args.arch, args.seed, splits, args, keras)
    gated = dsa_tf.prune_to_budget(model, 0.5, resource=allocation.RESOURCES[args.arch],
                                   seed=args.seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batches = list(splits.alpha.take(args.batches))
    groups = [gate.group for gate in gates_of(gated)]
    print(f"{args.arch}, seed {args.seed}: {args.batches} alpha batches x {args.repeats} mask "
          f"draws; dL/dTheta x 1e3 per group ({', '.join(groups)})\n")
    print("| signal | keep ratio | beta2 | mean per group | std per batch | SNR per batch "
          "| largest/smallest |mean| |")
    print("|---|---:|---:|---|---|---|---:|")
    for signal, keep_ratio, beta2 in itertools.product(args.signals, args.keep_ratios,
                                                       args.beta2):
        grads = measure(gated, batches, args.repeats, keep_ratio, beta2, signal, loss)
        mean, std = grads.mean(axis=0), grads.std(axis=0)
        spread = np.abs(mean).max() / max(np.abs(mean).min(), 1e-30)

        def show(values: np.ndarray, scale: float = 1.0) -> str:
            return " ".join(f"{scale * v:.3g}" for v in values)

        print(f"| {signal} | {keep_ratio} | {beta2} | "
              f"{show(mean, 1e3)} | {show(std, 1e3)} | "
              f"{show(mean / np.maximum(std, 1e-30))} | {spread:.3g} |", flush=True)


if __name__ == "__main__":
    main()
