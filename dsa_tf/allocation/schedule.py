"""When DSA's phases happen inside one ``fit``: warm-up, ADMM cadence, the allocation's deadline.

DSA's paper schedule is 300 epochs of CIFAR-10 (352 weight steps each at batch 128): 20 epochs
of warm-up, then one ADMM iteration every 20 weight steps until the budget is met (about 100
to 150 iterations, so by epoch ~28, a tenth of the training), then fine-tuning to the end. A
user's fit of 3 or 30 epochs needs the same proportions, not the same absolute numbers:
:func:`plan_schedule` scales them to any fit, counted in weight steps:

* warm-up: ``WARMUP_SHARE`` (1/15, the paper's 20 of 300 epochs) of the fit's steps;
* the allocation is planned to end by ``PLANNED_END`` (a third) of the steps, leaving at
  least two thirds for fine-tuning (:class:`dsa_tf.DSACallback` plans a pre-trained
  network's, without warm-up, to end by ``PLANNED_END_PRETRAINED``, a tenth). The ADMM
  reaches budgets from 0.25 to 0.9 within ``ADMM_ITERATIONS`` (150) iterations (measured in
  :mod:`dsa_tf.allocation.admm`), so the cadence is one iteration every ``window // 150``
  weight steps, at most the paper's 20 and at least 1. A window shorter than 150 steps runs
  several ADMM iterations per update (each on its own alpha batch), as many as needed to fit
  150 iterations in the window;
* the allocation must be over by ``FINISH_BY`` (60%) of the steps: if the budget is not met
  by then, :class:`dsa_tf.DSACallback` completes the allocation (see there), so that at least
  40% of the fit fine-tunes the final masks.

At 300 CIFAR-10 epochs this gives the paper's schedule exactly: 20 warm-up epochs and an ADMM
iteration every 20 steps.

Example:
    >>> plan_schedule(epochs=300, steps_per_epoch=352)
    Schedule(warmup_steps=7040, update_every=20, iterations_per_update=1, finish_step=63360)
    >>> plan_schedule(epochs=3, steps_per_epoch=8)    # 24 steps: many iterations per update
    Schedule(warmup_steps=2, update_every=1, iterations_per_update=25, finish_step=14)
"""

from __future__ import annotations

import dataclasses
import math

WARMUP_SHARE = 1 / 15
PLANNED_END = 1 / 3
PLANNED_END_PRETRAINED = 0.1  # DSACallback's default without warm-up (a pre-trained start)
FINISH_BY = 0.6
ADMM_ITERATIONS = 150
PAPER_UPDATE_EVERY = 20


@dataclasses.dataclass(frozen=True)
class Schedule:
    """DSA's phases in weight steps of one fit (counted from the fit's first epoch).

    Attributes:
        warmup_steps: plain-training steps before the allocation starts.
        update_every: weight steps between ADMM updates.
        iterations_per_update: ADMM iterations per update (each on the next alpha batch).
        finish_step: the step by which the allocation must be over (None: no deadline).
    """

    warmup_steps: int
    update_every: int
    iterations_per_update: int
    finish_step: int | None


def check_settings(warmup_epochs: int | None, update_every: int | None,
                   finish_by: float | None, allocate_by: float = PLANNED_END) -> None:
    """Refuses schedule settings out of range (the first three may be None: planned from
    the fit).

    Raises:
        ValueError: warmup_epochs < 0, update_every < 1, finish_by or allocate_by outside
            (0, 1], or allocate_by after finish_by.
    """
    if warmup_epochs is not None and warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0 or None, got {warmup_epochs}.")
    if update_every is not None and update_every < 1:
        raise ValueError(f"update_every must be >= 1 or None, got {update_every}.")
    if finish_by is not None and not 0 < finish_by <= 1:
        raise ValueError(f"finish_by must be in (0, 1] or None, got {finish_by}.")
    if not 0 < allocate_by <= 1:
        raise ValueError(f"allocate_by must be in (0, 1], got {allocate_by}.")
    if finish_by is not None and allocate_by > finish_by:
        raise ValueError(f"allocate_by ({allocate_by}) must not be after finish_by "
                         f"({finish_by}), the deadline by which the allocation is completed.")


def plan_schedule(epochs: int, steps_per_epoch: int, *, warmup_epochs: int | None = None,
                  update_every: int | None = None,
                  finish_by: float | None = FINISH_BY,
                  allocate_by: float = PLANNED_END) -> Schedule:
    """Scales DSA's schedule to a fit of ``epochs`` x ``steps_per_epoch`` weight steps.

    Args:
        epochs: the fit's epochs (``fit(epochs=...)``).
        steps_per_epoch: weight steps per epoch.
        warmup_epochs: plain-training epochs; None: ``WARMUP_SHARE`` of the steps.
        update_every: weight steps per ADMM update (then one iteration per update); None:
            the cadence that fits ``ADMM_ITERATIONS`` iterations between the end of the
            warm-up and ``allocate_by`` of the steps.
        finish_by: share of the steps by which the allocation must be over, or None.
        allocate_by: share of the steps by which the allocation is planned to end
            (default ``PLANNED_END``, a third); the warm-up counts in it.

    Returns:
        The :class:`Schedule`.

    Raises:
        ValueError: non-positive epochs or steps, negative warm-up, update_every < 1,
            finish_by or allocate_by outside (0, 1], or allocate_by after finish_by.

    Example:
        >>> plan_schedule(epochs=8, steps_per_epoch=85)
        Schedule(warmup_steps=45, update_every=1, iterations_per_update=1, finish_step=408)
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"A fit needs epochs >= 1 and steps >= 1, got {epochs} and "
                         f"{steps_per_epoch}.")
    check_settings(warmup_epochs, update_every, finish_by, allocate_by)
    total = epochs * steps_per_epoch
    if warmup_epochs is None:
        warmup = round(total * WARMUP_SHARE)
    else:
        warmup = warmup_epochs * steps_per_epoch
    finish = None if finish_by is None else max(warmup + 1, round(total * finish_by))
    if update_every is not None:
        return Schedule(warmup, int(update_every), 1, finish)
    window = max(1, round(total * allocate_by) - warmup)
    every = min(PAPER_UPDATE_EVERY, max(1, window // ADMM_ITERATIONS))
    per_update = math.ceil(ADMM_ITERATIONS / max(1, window // every))
    return Schedule(warmup, every, per_update, finish)
