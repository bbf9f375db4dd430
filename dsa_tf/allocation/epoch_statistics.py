"""EpochStatistics: BatchNorm statistics re-estimated for the weights every epoch ends with.

Once a callback has pruned a gated network (DSA's freeze, or a baseline allocator's one-shot
pruning), the rest of ``fit`` fine-tunes it with fixed masks, and Keras's moving averages
trail the weights (momentum 0.99: the batch statistics of the last hundred or so steps,
under weights that still move). Everything that reads the model at an epoch's end sees them:
the epoch's validation metrics, ``ModelCheckpoint``, the snapshot of
``EarlyStopping(restore_best_weights=True)``, a user's ``model.save`` in a callback. So
:class:`dsa_tf.DSACallback` and :class:`dsa_tf.OneShotCallback` re-estimate the statistics
(:func:`dsa_tf.reestimate_batchnorm`) after the last weight step of every fine-tuning epoch,
before Keras validates and before the epoch-end callbacks listed after them run (at the
epoch's end instead when its length is unknown), and when ``fit`` ends after weight steps
no re-estimation has followed (a fit stopped in the middle of an epoch). Each costs
``batches`` forward passes in training mode, once per epoch.

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 8, 8, 3)).astype("float32")
    >>> statistics = EpochStatistics(tf.data.Dataset.from_tensor_slices(x).batch(16), 2,
    ...                              "bn_data", lambda message: None)
    >>> statistics.batch_end(model, batch=9, tuned=True, steps_per_epoch=10, epoch=0)
    >>> statistics.stale   # re-estimated after the epoch's last step: nothing left to do
    0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dsa_tf.allocation.batch_norm import reestimate_batchnorm


class EpochStatistics:
    """Keeps a callback's model's BatchNorm statistics re-estimated at fine-tuning epochs' ends.

    Args:
        data: the batches re-estimations run on (a re-iterable dataset or list; None with
            ``batches`` 0).
        batches: batches per re-estimation (0: never re-estimate).
        name: what the callback calls ``data`` (for its messages).
        say: prints a message (the callback's verbosity decides).

    ``stale`` counts the fine-tuning weight steps since the statistics were last estimated.
    """

    def __init__(self, data: Iterable | None, batches: int, name: str, say: Callable[[str], None]):
        self.data = data
        self.batches = int(batches)
        self.name = name
        self.say = say
        self.begin_fit()

    def begin_fit(self) -> None:
        """Forgets the previous fit (its last re-estimation covered its weights)."""
        self.stale = 0
        self._told = False

    def reestimate(self, model: Any) -> int:
        """Re-estimates the statistics for the current weights now (e.g. right after
        pruning); returns the number of batches used (0: none, or ``batches`` is 0)."""
        self.stale = 0
        return reestimate_batchnorm(model, self.data, self.batches) if self.batches else 0

    def batch_end(self, model: Any, batch: int, tuned: bool, steps_per_epoch: int | None,
                  epoch: int) -> None:
        """After weight step ``batch`` (from 0) of ``epoch``; ``tuned``: a fine-tuning step.
        Re-estimates after the epoch's last step when the epoch's length is known."""
        self.stale += bool(tuned)
        if self.stale and steps_per_epoch and batch + 1 >= steps_per_epoch:
            self._reestimate(model, epoch)

    def epoch_end(self, model: Any, epoch: int) -> None:
        """At the end of an epoch whose last step :meth:`batch_end` did not recognise."""
        if self.stale:
            self._reestimate(model, epoch)

    def train_end(self, model: Any) -> None:
        """When ``fit`` ends: for fine-tuning steps no re-estimation has followed."""
        if self.stale:
            self._reestimate(model, None)

    def _reestimate(self, model: Any, epoch: int | None) -> None:
        """Re-estimates; says so at the end of the fit and at the first epoch's end."""
        used = self.reestimate(model)
        if not used:
            return
        if epoch is None:
            self.say(f"BatchNorm statistics re-estimated on {used} {self.name} batches for "
                     f"the weights fit ended with")
        elif not self._told:
            self._told = True
            self.say(f"BatchNorm statistics re-estimated on {used} {self.name} batches for "
                     f"the weights epoch {epoch + 1} ended with, as they will be at the end "
                     f"of every later epoch")
