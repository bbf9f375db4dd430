"""RunConfig: everything one pruning run needs, and the named schedules ``paper`` and ``quick``.

``paper`` is DSA's schedule (Ning et al., ECCV 2020): on CIFAR-sized data 300 epochs, batch 128,
SGD momentum 0.9, lr 0.05 divided by 10 at epochs 120/180/240, weight decay 4e-5, and DSA's
phases planned from the fit's length (:mod:`dsa_tf.allocation.schedule`), which at 300 epochs
gives the paper's 20 warm-up epochs and one ADMM iteration per 20 weight steps; on
ImageNet-sized data (images larger than 64x64, or a dataset named imagenet*) 120 epochs, batch
256, lr 0.1 divided by 10 at 50/80/110, 15 warm-up epochs (weight decay 1e-4, which the paper
does not state: the usual value for ImageNet ResNets). ``quick`` is sized for a CPU: a
ResNet-8 on the whole training set for 8 epochs (cosine learning rate), minutes not days, with
the phases planned by the same rule. ``--warmup_epochs`` and ``--update_every`` override it.

Example:
    >>> config = preset("quick", dataset="cifar10", budget=0.5)
    >>> config.model, config.epochs, config.budget
    ('resnet8', 8, 0.5)
    >>> preset("paper", dataset="cifar10", model="resnet56").lr_boundaries
    (120, 180, 240)
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEDULES = ("step", "cosine")
ALLOCATIONS = ("dsa", "uniform", "magnitude", "taylor")


def _setting(default: Any, help_text: str) -> Any:
    """A RunConfig field with its default and its help text."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class RunConfig:
    """The settings of one ``dsa-tf prune`` run.

    Every field is also a ``dsa-tf prune`` flag; its ``help`` metadata, below, says what it
    means and is the flag's help text.
    """

    model: str = _setting(
        "resnet20", "resnet20/32/44/56/110 (CIFAR ResNets, any 6n+2 depth), a "
        "keras.applications name (MobileNetV2, ResNet50...) or the path of a .keras model.")
    dataset: str = _setting(
        "cifar10", "A tfds image-classification dataset (cifar10, fashion_mnist, imagenette...).")
    out: str = _setting("runs/dsa", "The run directory.")
    budget: float = _setting(
        0.5, "Kept fraction of --resource (0 < budget <= 1), or an absolute amount (> 1: "
        "FLOPs, params, or milliseconds of latency).")
    resource: str = _setting(
        "flops", "flops, params or latency (LiteRT float32 invoke time predicted by a latency "
        "table: --latency_table, else one measured on this machine).")
    latency_table: str | None = _setting(
        None, "A latency table made by `dsa-tf profile` on the target device (with "
        "--resource=latency).")
    allocation: str = _setting(
        "dsa", "Who chooses the widths: dsa (learned during training), or a one-shot baseline "
        "applied where DSA's allocation would begin (after the warm-up; at the start with "
        "--init): uniform (one keep ratio for all groups), magnitude (one global threshold "
        "on BatchNorm |gamma|, network slimming) or taylor (first-order Taylor importance on "
        "4 training batches).")
    round_to: int | None = _setting(
        None, "Pruned groups keep multiples of this many channels (or all of them); default 1, "
        "and with --resource=latency each group's step in the latency table (8, or 16 where the "
        "table shows the runtime computing the group's channels in tiles of 16).")
    init: str | None = _setting(
        None, "A pre-trained .keras model to start from (no warm-up; it is also evaluated as "
        "the unpruned reference).")
    weights: str | None = _setting(
        None, "'imagenet' to start a keras.applications model from ImageNet weights.")
    data_dir: str | None = _setting(
        None, "tfds data_dir (default: $TFDS_DATA_DIR, else tfds' default).")
    download: bool = _setting(
        False, "Let tfds download and prepare a missing dataset into the data folder.")
    manual_dir: str | None = _setting(
        None, "Where tfds finds manually downloaded files (imagenet2012), with --download.")
    image_size: int | None = _setting(
        None, "Resize images to this side (default: the dataset's own size).")
    train_examples: int = _setting(
        0, "Train on a seeded subset of this many training images (0: all).")
    alpha_fraction: float = _setting(
        0.1, "Share of the training images held out for the keep-ratio steps.")
    epochs: int = _setting(
        300, "Training epochs in total (warm-up, allocation and fine-tuning).")
    warmup_epochs: int | None = _setting(
        None, "Plain-training epochs before the allocation starts (default: 1/15 of the "
        "training, the paper's 20 of 300 epochs; 0 with --init).")
    allocate_by: float | None = _setting(
        None, "Share of the training by which DSA's allocation is planned to end (default: a "
        "third, a tenth with --init).")
    dsa_paper: bool = _setting(
        False, "DSA with the paper's settings (straight-through keep-ratio gradients, random "
        "masks while allocating, allocation planned to end by a third) instead of the "
        "measured defaults (see dsa_tf.DSACallback).")
    update_every: int | None = _setting(
        None, "Weight steps per ADMM iteration (default: planned from the run's length; the "
        "paper's 20 when it is long enough).")
    batch_size: int = _setting(128, "Training batch size.")
    lr: float = _setting(0.05, "Initial learning rate of SGD with momentum.")
    lr_schedule: str = _setting(
        "step", "step (divide by 10 at --lr_boundaries) or cosine (decay to 0).")
    lr_boundaries: tuple[int, ...] = _setting(
        (120, 180, 240), "Epochs at which the step schedule divides the learning rate by 10.")
    momentum: float = _setting(0.9, "SGD momentum.")
    weight_decay: float = _setting(
        4e-5, "Decoupled weight decay of the optimizer (scaled by the learning rate).")
    seed: int = _setting(0, "Seed of the split, the initial weights, the masks and the shuffles.")
    reference: bool = _setting(
        False, "Also train the unpruned network on the same schedule (same data, initial "
        "weights, seed and epochs) and report its test accuracy beside the pruned model's: "
        "what pruning cost. It doubles the training time. With --init the pre-trained model "
        "is the reference instead.")
    int8: bool = _setting(True, "Also export and verify a full-integer TFLite model.")
    latency_runs: int = _setting(
        20, "Timed rounds per model in the LiteRT latency measurement.")

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}.")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got "
                             f"{self.allocation!r}.")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        if self.warmup_epochs is not None and (
                self.warmup_epochs < 0 or self.epochs <= self.warmup_epochs):
            raise ValueError(f"epochs ({self.epochs}) must exceed warmup_epochs "
                             f"({self.warmup_epochs}), which must be >= 0, so that allocation "
                             f"and fine-tuning have epochs to run in.")
        for name in ("update_every", "batch_size", "round_to", "latency_runs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.allocate_by is not None and not 0 < self.allocate_by <= 1:
            raise ValueError(f"allocate_by must be in (0, 1], got {self.allocate_by}.")
        if not 0 < self.alpha_fraction < 1:
            raise ValueError(f"alpha_fraction must be in (0, 1), got {self.alpha_fraction}.")
        self.lr_boundaries = tuple(int(b) for b in self.lr_boundaries)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        values = dataclasses.asdict(self)
        values["lr_boundaries"] = list(self.lr_boundaries)
        return values


def is_imagenet_sized(dataset: str, image_size: int | None = None) -> bool:
    """True for ImageNet-like data: a dataset named imagenet*/imagenette*, or images > 64 px."""
    return dataset.startswith(("imagenet", "imagenette")) or (image_size or 0) > 64


def preset(name: str, **overrides: Any) -> RunConfig:
    """The named schedule ``"paper"`` or ``"quick"`` for the dataset in ``overrides``, with
    every given field overriding the schedule's value.

    Raises:
        ValueError: an unknown preset or field name.
    """
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown run settings {unknown}; known: {sorted(fields)}.")
    dataset = overrides.get("dataset", RunConfig.dataset)
    if name == "paper":
        if is_imagenet_sized(dataset, overrides.get("image_size")):
            values: dict[str, Any] = dict(
                model="ResNet50", epochs=120, batch_size=256, lr=0.1, lr_schedule="step",
                lr_boundaries=(50, 80, 110), warmup_epochs=15, weight_decay=1e-4)
        else:
            values = dict(model="resnet20", epochs=300, batch_size=128, lr=0.05,
                          lr_schedule="step", lr_boundaries=(120, 180, 240), weight_decay=4e-5)
    elif name == "quick":
        values = dict(model="resnet8", epochs=8, batch_size=128, lr=0.05, lr_schedule="cosine",
                      weight_decay=5e-4, train_examples=0, latency_runs=10)
    else:
        raise ValueError(f"Unknown config {name!r}; use 'paper' or 'quick'.")
    values.update(overrides)
    if values.get("init") and "warmup_epochs" not in overrides:
        values["warmup_epochs"] = 0  # a pre-trained start needs no warm-up
    return RunConfig(**values)
