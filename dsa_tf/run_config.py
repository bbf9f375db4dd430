"""RunConfig: everything one pruning run needs, and the named schedules ``paper`` and ``quick``.

``paper`` is DSA's schedule (Ning et al., ECCV 2020): on CIFAR-sized data 300 epochs, batch 128,
SGD momentum 0.9, lr 0.05 divided by 10 at epochs 120/180/240, weight decay 4e-5, 20 warm-up
epochs, one ADMM iteration per 20 weight steps; on ImageNet-sized data (images larger than
64x64, or a dataset named imagenet*) 120 epochs, batch 256, lr 0.1 divided by 10 at 50/80/110, 15
warm-up epochs (weight decay 1e-4, which the paper does not state: the usual value for ImageNet
ResNets). ``quick`` is sized for a CPU: a ResNet-8 on the whole training set for 8 epochs
(cosine learning rate, one warm-up epoch, an ADMM iteration every 2 steps), minutes not days.

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


@dataclasses.dataclass
class RunConfig:
    """The settings of one ``dsa-tf prune`` run (every field is also a command-line flag).

    Attributes:
        model: a CIFAR ResNet ("resnet20", "resnet56", any 6n+2 depth), a keras.applications
            name ("MobileNetV2", "ResNet50"...), or the path of a ``.keras`` model.
        dataset: a tfds image-classification dataset name.
        out: the run directory.
        budget: the kept fraction of ``resource`` (0 < budget <= 1).
        resource: "flops" or "params".
        round_to: pruned groups keep multiples of this many channels (or all of them).
        init: a pre-trained ``.keras`` model to start from (no warm-up; it is also evaluated
            as the unpruned reference).
        weights: "imagenet" to start a keras.applications model from ImageNet weights.
        data_dir: tfds data_dir (None: ``$TFDS_DATA_DIR`` or tfds' default).
        download: let tfds download and prepare a missing dataset into the data folder.
        manual_dir: where tfds finds manually downloaded files (imagenet2012), with
            ``download``.
        image_size: resize images to this side (None: the dataset's own size).
        train_examples: use a seeded subset of this many training images (0: all).
        alpha_fraction: the share of the training images held out for the keep-ratio steps.
        epochs: training epochs in total (warm-up, allocation and fine-tuning).
        warmup_epochs: plain-training epochs before the allocation starts.
        update_every: weight steps per ADMM iteration.
        batch_size: training batch size.
        lr: initial learning rate of SGD with momentum.
        lr_schedule: "step" (divide by 10 at ``lr_boundaries``) or "cosine" (decay to 0).
        lr_boundaries: epochs at which the "step" schedule divides the learning rate by 10.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay of the optimizer (scaled by the learning rate).
        seed: seed of the split, the initial weights, the masks and the shuffles.
        int8: also export and verify a full-integer TFLite model.
        latency_runs: timed rounds per model in the LiteRT latency measurement.
    """

    model: str = "resnet20"
    dataset: str = "cifar10"
    out: str = "runs/dsa"
    budget: float = 0.5
    resource: str = "flops"
    round_to: int = 1
    init: str | None = None
    weights: str | None = None
    data_dir: str | None = None
    download: bool = False
    manual_dir: str | None = None
    image_size: int | None = None
    train_examples: int = 0
    alpha_fraction: float = 0.1
    epochs: int = 300
    warmup_epochs: int = 20
    update_every: int = 20
    batch_size: int = 128
    lr: float = 0.05
    lr_schedule: str = "step"
    lr_boundaries: tuple[int, ...] = (120, 180, 240)
    momentum: float = 0.9
    weight_decay: float = 4e-5
    seed: int = 0
    int8: bool = True
    latency_runs: int = 20

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}.")
        if self.warmup_epochs < 0 or self.epochs <= self.warmup_epochs:
            raise ValueError(f"epochs ({self.epochs}) must exceed warmup_epochs "
                             f"({self.warmup_epochs}), which must be >= 0, so that allocation "
                             f"and fine-tuning have epochs to run in.")
        for name in ("update_every", "batch_size", "round_to", "latency_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
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
                lr_boundaries=(50, 80, 110), warmup_epochs=15, update_every=20,
                weight_decay=1e-4)
        else:
            values = dict(model="resnet20", epochs=300, batch_size=128, lr=0.05,
                          lr_schedule="step", lr_boundaries=(120, 180, 240), warmup_epochs=20,
                          update_every=20, weight_decay=4e-5)
    elif name == "quick":
        values = dict(model="resnet8", epochs=8, batch_size=128, lr=0.05, lr_schedule="cosine",
                      warmup_epochs=1, update_every=2, weight_decay=5e-4, train_examples=0,
                      latency_runs=10)
    else:
        raise ValueError(f"Unknown config {name!r}; use 'paper' or 'quick'.")
    values.update(overrides)
    if values.get("init") and "warmup_epochs" not in overrides:
        values["warmup_epochs"] = 0  # a pre-trained start needs no warm-up
    return RunConfig(**values)
