"""The DSA paper's CIFAR-10 experiment: a ResNet-20 or ResNet-56 pruned to a FLOPs budget.

What it shows: the paper's schedule (``dsa_tf.run.config.preset("paper")``: 300 epochs, batch
128, SGD momentum 0.9, lr 0.05 divided by 10 at epochs 120/180/240, weight decay 4e-5, 20 warm-up
epochs, one ADMM iteration every 20 weight steps, a 90/10 split of the training set for the
weights and the keep ratios, pad-and-crop and flip augmentation), run end to end by
``dsa_tf.run.pipeline.run_pruning``: training from scratch, strip, test accuracy, TFLite export
(float32 and int8, verified) and latency, with the run directory described in the README.

Time: the full schedule is days on 2 CPU cores (ResNet-20 trains at about 65 images/s here)
and hours on one GPU; ``--epochs`` and ``--train_examples`` shorten it. An interrupted run
resumes when started again with the same flags.

    python examples/cifar10_resnet.py --depth=56 --budget=0.5 --out=runs/paper_r56 \
        --data_dir=../shared/tensorflow_datasets
"""

from __future__ import annotations

from absl import app, flags

from dsa_tf.run.config import preset
from dsa_tf.run.pipeline import run_pruning

DEPTH = flags.DEFINE_enum("depth", "20", ["20", "56"], "ResNet depth.")
BUDGET = flags.DEFINE_float("budget", 0.5, "FLOPs budget (the paper: 0.75, 0.5, 0.33).")
OUT = flags.DEFINE_string("out", None, "Run directory (default runs/paper_r<depth>_<budget>).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")
EPOCHS = flags.DEFINE_integer("epochs", 300, "Epochs (the learning-rate steps scale with it).")
TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 0, "Training subset (0: all).")

# Top-1 test accuracy the DSA paper reports on CIFAR-10 (original images), by depth and budget.
PAPER_TOP1 = {("20", 0.75): 92.10, ("20", 0.5): 91.38, ("20", 0.33): 90.24,
              ("56", 0.75): 93.08, ("56", 0.5): 92.91, ("56", 0.33): 92.20}


def main(argv: list[str]) -> None:
    del argv
    scale = EPOCHS.value / 300
    config = preset(
        "paper", dataset="cifar10", model=f"resnet{DEPTH.value}", budget=BUDGET.value,
        data_dir=DATA_DIR.value, train_examples=TRAIN_EXAMPLES.value, epochs=EPOCHS.value,
        lr_boundaries=tuple(round(b * scale) for b in (120, 180, 240)),
        out=OUT.value or f"runs/paper_r{DEPTH.value}_{BUDGET.value:g}")
    report = run_pruning(config)
    paper = PAPER_TOP1.get((DEPTH.value, BUDGET.value))
    print(f"ResNet-{DEPTH.value} at {BUDGET.value:.0%} of the FLOPs: here "
          f"{report['stripped']['flops_ratio']:.1%} of the FLOPs and test accuracy "
          f"{report['stripped']['test_accuracy']:.2%}"
          + (f"; the paper reports {paper:.2f}% (300 epochs, original CIFAR-10)" if paper else ""))


if __name__ == "__main__":
    app.run(main)
