"""OneShotCallback: a baseline allocator prunes a gated model once, inside ``fit``, as DSA would.

To compare an allocator with DSA fairly, both must train on the same schedule: DSA trains the
full network for its warm-up (1/15 of the fit's steps, :mod:`dsa_tf.allocation.schedule`),
allocates, and fine-tunes the rest of the same ``fit``. This callback does the same with any
allocator that maps a plain model to a keep dict (:func:`dsa_tf.uniform_allocation`,
:func:`dsa_tf.magnitude_allocation`, :func:`dsa_tf.taylor_allocation`, or your own): at the
step where DSA's allocation would begin, it hands the allocator a plain full-width copy of the
gated model with the weights trained so far, and freezes the gates to the returned channels
(:func:`dsa_tf.apply_allocation`); the rest of the fit trains the pruned network, with the
same optimizer and learning-rate schedule. With ``warmup_epochs=0`` it prunes before the
first step: one-shot pruning of a pre-trained model followed by fine-tuning.

Given ``bn_data`` (held-out or training batches, as DSA's ``alpha_data``), it also treats the
BatchNorm statistics as DSACallback does: re-estimated under the pruned network right after
pruning, after the last weight step of every fine-tuning epoch and when fit ends in the
middle of one (:func:`dsa_tf.reestimate_batchnorm` on ``bn_batches`` batches;
:class:`dsa_tf.allocation.epoch_statistics.EpochStatistics`). Without it the moving
averages are Keras's: gathered partly under the full width, and trailing the weights. A
``keras.applications.MobileNetV2`` (BatchNorm momentum 0.999) pruned to half its FLOPs in a
6-epoch fit tested at chance (0.1000) as Keras left it and 0.3388 re-estimated
(BENCHMARKS.md, "The allocation's cost").

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
    >>> gated = dsa_tf.prune_to_budget(model, 0.5)
    >>> gated.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(32, 8, 8, 3).astype("float32"), np.arange(32) % 10
    >>> prune = dsa_tf.OneShotCallback(lambda m: dsa_tf.uniform_allocation(m, 0.5), verbose=0)
    >>> _ = gated.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[prune])
    >>> dsa_tf.count_flops(dsa_tf.strip(gated)) <= 0.5 * dsa_tf.count_flops(model)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsa_tf import _keras
from dsa_tf.allocation.apply import apply_allocation
from dsa_tf.allocation.callback import BN_BATCHES
from dsa_tf.allocation.epoch_statistics import EpochStatistics
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gated_strip import strip
from dsa_tf.allocation.gates import FROZEN, STOCHASTIC
from dsa_tf.allocation.magnitude import magnitude_allocation
from dsa_tf.allocation.schedule import check_settings, plan_schedule
from dsa_tf.allocation.taylor import taylor_allocation
from dsa_tf.allocation.uniform import uniform_allocation

Allocator = Callable[[Any], Mapping[str, Any]]
BASELINES = ("uniform", "magnitude", "taylor")


def baseline_allocator(name: str, budget: float | Mapping[str, float], *,
                       data: Iterable | None = None, loss: Any = None,
                       **settings: Any) -> Allocator:
    """The allocator ``model -> keep`` of a baseline named ``name`` at ``budget``.

    Args:
        name: "uniform", "magnitude" or "taylor".
        budget: as for :func:`dsa_tf.prune_to_budget`.
        data: the ``(x, y)`` batches Taylor scores are taken on (taylor only).
        loss: the loss of the Taylor scores (taylor only; default: the compiled one).
        **settings: ``resource``, ``min_channels``, ``round_to``, ``exclude``, and for taylor
            ``batches``.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> import dsa_tf
        >>> allocate = baseline_allocator("uniform", 0.5, round_to=4)
        >>> keep = allocate(dsa_tf.models.cifar_resnet(20))
        >>> sorted({len(k) for k in keep.values()})
        [12, 20, 24, 44]
    """
    if name == "taylor":
        return lambda model: taylor_allocation(model, budget, data, loss=loss, **settings)
    functions = {"uniform": uniform_allocation, "magnitude": magnitude_allocation}
    if name not in functions:
        raise ValueError(f"Unknown baseline allocator {name!r}; use one of {BASELINES}.")
    return lambda model: functions[name](model, budget, **settings)


class OneShotCallback(_keras.default_keras().callbacks.Callback):
    """Prunes a gated model with ``allocator`` once, where DSA's allocation would begin.

    Args:
        allocator: ``allocator(model) -> {group_name: kept channel indices}``, called with a
            plain full-width copy of the gated model holding the weights trained so far (the
            gated model itself is not handed out). Make it with the settings the model was
            gated with (``min_channels``, ``round_to``, ``exclude``).
        warmup_epochs: full-network epochs before pruning; None: DSA's warm-up for this fit
            (1/15 of its steps, :func:`dsa_tf.allocation.schedule.plan_schedule`; the whole
            first epoch when the fit's steps per epoch are unknown); 0: before the first step.
        bn_data: batches of inputs or ``(x, y)`` tuples on which the BatchNorm statistics
            are re-estimated after pruning and at the end of every fine-tuning epoch (a
            re-iterable dataset or list); None: the moving averages are left to Keras.
        bn_batches: how many batches of ``bn_data`` each re-estimation averages (0: none).
        verbose: 1 prints the step it pruned at and the kept channels per group.

    Raises:
        ValueError: (at the start of ``fit``) a model without ChannelGate, or in the middle
            of DSA's allocation; a negative ``warmup_epochs`` or ``bn_batches``. Gates
            already frozen (a fit resumed by ``BackupAndRestore`` after the pruning, or an
            allocated model) are left as they are.

    Example:
        >>> import dsa_tf
        >>> budget = 0.3
        >>> callback = dsa_tf.OneShotCallback(
        ...     lambda model: dsa_tf.magnitude_allocation(model, budget), warmup_epochs=0)
    """

    def __init__(self, allocator: Allocator, *, warmup_epochs: int | None = None,
                 bn_data: Iterable | None = None, bn_batches: int = BN_BATCHES,
                 verbose: int = 1):
        super().__init__()
        if not callable(allocator):
            raise ValueError(f"allocator must be callable (model -> keep dict), got "
                             f"{type(allocator).__name__}.")
        check_settings(warmup_epochs, None, None)
        if bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0, got {bn_batches}.")
        self.allocator = allocator
        self.warmup_epochs = warmup_epochs
        self.bn_data = bn_data
        self.bn_batches = int(bn_batches)
        self.verbose = verbose
        self.pruned_at: tuple[int, int] | None = None  # (epoch, batch), both from 0
        self._statistics = EpochStatistics(bn_data, self.bn_batches if bn_data is not None
                                           else 0, "bn_data", self._say)

    def on_train_begin(self, logs: dict | None = None) -> None:
        gates = gates_of(self.model)
        if not gates:
            raise ValueError(f"OneShotCallback needs a model made by dsa_tf.prune_to_budget; "
                             f"{self.model.name!r} has no ChannelGate.")
        if int(gates[0].mode.numpy()) == STOCHASTIC:
            raise ValueError("OneShotCallback: DSA's allocation is running in this model's "
                             "gates; gate the model again (dsa_tf.prune_to_budget) to prune "
                             "it with a baseline allocator.")
        steps = self.params.get("steps")
        epochs = int(self.params.get("epochs") or 1)
        self._warmup_steps = None if not steps else plan_schedule(
            epochs, int(steps), warmup_epochs=self.warmup_epochs, finish_by=None).warmup_steps
        self._steps = int(steps or 0)
        self._epoch = 0
        self._statistics.begin_fit()
        if self.warmup_epochs == 0:
            self._prune(0, 0)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        if self._warmup_steps is None and epoch >= 1:  # unknown steps: epoch 1 was warm-up
            self._prune(epoch, 0)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._warmup_steps is not None \
                and self._epoch * self._steps + batch >= self._warmup_steps:
            self._prune(self._epoch, batch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._statistics.batch_end(self.model, batch, self.pruned_at is not None,
                                   self._steps, self._epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._statistics.epoch_end(self.model, epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._statistics.train_end(self.model)

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"OneShotCallback: {message}", flush=True)

    def _prune(self, epoch: int, batch: int) -> None:
        if self.pruned_at is not None:
            return
        if int(gates_of(self.model)[0].mode.numpy()) == FROZEN:
            # Frozen before: restored by BackupAndRestore when a fit resumes, or allocated.
            self.pruned_at = (epoch, batch)
            self._say("the gates are already frozen: nothing to prune")
            return
        full = strip(self.model, keep={})  # every channel: the network trained so far
        keep = self.allocator(full)
        apply_allocation(self.model, keep)
        self.pruned_at = (epoch, batch)
        if self.verbose:
            kept = ", ".join(f"{g.group} {int(g.mask.numpy().sum())}/{g.channels}"
                             for g in gates_of(self.model))
            print(f"OneShotCallback: pruned at epoch {epoch + 1}, step {batch + 1}: {kept}",
                  flush=True)
        used = self._statistics.reestimate(self.model)
        if used:
            self._say(f"BatchNorm statistics re-estimated on {used} bn_data batches "
                      f"under the pruned network")
