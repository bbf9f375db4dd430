"""DSACallback: DSA's budgeted allocation of channels inside an ordinary ``model.fit``.

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20, input_shape=(8, 8, 3))
    >>> gated = dsa_tf.prune_to_budget(model, budget=0.5)
    >>> gated.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(64, 8, 8, 3).astype("float32"), np.arange(64) % 10
    >>> data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    >>> history = gated.fit(data, epochs=3, verbose=0,
    ...                     callbacks=[dsa_tf.DSACallback(data, verbose=0)])
    >>> history.history["dsa_flops_hard"][-1] <= 0.5
    True
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.allocation import admm, keep_process
from dsa_tf.allocation.alpha_data import (
    alpha_batches,
    check_alpha_data,
    check_reiterable,
)
from dsa_tf.allocation.budget import meets
from dsa_tf.allocation.epoch_statistics import EpochStatistics
from dsa_tf.allocation.fitted_counts import fitted_counts, largest_shift
from dsa_tf.allocation.gated_model import (
    gates_of,
    refresh_importance,
    resample_masks,
    set_keep_ratios,
)
from dsa_tf.allocation.gated_strip import gate_order
from dsa_tf.allocation.gates import (
    BY_ALLOCATION,
    BY_COMPLETION,
    FROZEN,
    OPEN,
    PHASE_NAMES,
    STOCHASTIC,
)
from dsa_tf.allocation.keep_differences import (
    keep_ratio_differences,
    keep_ratio_top_k_differences,
)
from dsa_tf.allocation.keep_gradients import keep_ratio_gradients, resolve_loss
from dsa_tf.allocation.largest_passing import largest_passing
from dsa_tf.allocation.measured_latency import (
    measured_here,
    time_against_unpruned,
    within_measured_latency,
)
from dsa_tf.allocation.resources import ResourceModel
from dsa_tf.allocation.schedule import (
    ADMM_ITERATIONS,
    FINISH_BY,
    PLANNED_END,
    PLANNED_END_PRETRAINED,
    Schedule,
    check_settings,
    plan_schedule,
)
from dsa_tf.deploy.latency_table import LatencyTable
from dsa_tf.structure.graph import analyze

BN_BATCHES = 32
KEEP_SIGNALS = ("straight_through", "differences", "top_k_differences")
WEIGHT_MASKS = ("sampled", "top_k")
# The paper's settings where the defaults depart from them (DSACallback.paper).
PAPER = {"keep_signal": "straight_through", "weight_masks": "sampled",
         "allocate_by": PLANNED_END}


class DSACallback(_keras.default_keras().callbacks.Callback):
    """Learns every group's keep ratio under the budget while ``fit`` trains the weights.

    Phases (stored in the gates' ``mode`` variables, so checkpoints carry them):

    1. warm-up: plain training, gates open;
    2. allocation: before every weight step each gate draws one DSA Bernoulli mask for its
       whole group (:func:`dsa_tf.allocation.gated_model.resample_masks`), and the weight
       step trains under each group's top-k mask at its current keep ratio (the network the
       allocation would end with now; ``weight_masks``); every ``update_every`` weight
       steps, ADMM iterations (:func:`dsa_tf.allocation.admm.admm_iteration`): each a Theta
       step on the next batch of ``alpha_data`` (repeated as needed), 50 z steps and the
       dual update. The Theta step follows central differences of the loss in each group's
       keep ratio under the sampled masks (``keep_signal``), in training mode, leaving the
       BatchNorm moving statistics as they were. The steepness beta2 starts at 0.05 and
       grows 1.1x per epoch (with ``beta2_relative=True`` it is counted in units of each
       group's spread of log importances). Base importances are refreshed from the
       BatchNorm |gamma| (or filter L1 norms) before every weight step;
    3. fine-tuning: as soon as the hard configuration (the top-k channels of each group,
       k = ``ChannelGate.kept_count()``, honouring ``round_to``) meets every budget, the masks
       are frozen, the BatchNorm moving statistics are re-estimated under them
       (:func:`dsa_tf.reestimate_batchnorm` on ``bn_batches`` batches of ``alpha_data``), and
       training goes on with fixed masks to the end of ``fit``. After the last weight step
       of every fine-tuning epoch (before Keras validates), and when ``fit`` ends in the
       middle of one, the statistics are re-estimated again for the weights as they are
       (:class:`dsa_tf.allocation.epoch_statistics.EpochStatistics`): moving averages
       (momentum 0.99) trail weights that still move: on an 8-epoch fit at a constant
       learning rate, without this the stripped network tested 6-16 points below its
       training-mode accuracy (3 seeds), with it 1-2 points below the unpruned network
       re-estimated the same way (BENCHMARKS.md "DSA with default settings on a user's short
       schedule"). So the epoch's validation metrics, and ``ModelCheckpoint`` and
       ``EarlyStopping(restore_best_weights=True)`` listed after this callback, see
       statistics that match the weights.

    The schedule follows the fit (:func:`dsa_tf.allocation.schedule.plan_schedule`): when
    ``fit`` begins the callback reads its epochs and steps per epoch and, for the arguments
    left at None, keeps the paper's proportions: warm-up for 1/15 of the steps (the paper's
    20 of 300 epochs), and an ADMM cadence that fits the 150 iterations the ADMM needs at
    most (budgets 0.25-0.9, :mod:`dsa_tf.allocation.admm`) between the end of the warm-up
    and a third of the steps: one iteration every 20 weight steps (the paper's value) when
    the fit is long enough, down to one per step, and several per step (each on its own
    alpha batch) for fits of fewer than ~500 steps; an ADMM iteration costs two forward
    passes per group on an alpha batch with the default loss differences (about one weight
    step with the paper's gradient), so such a fit runs longer than its own length (on the
    allocation benchmark's 8-epoch fits, 1.5-2.3x a baseline allocator's). At 300 CIFAR-10
    epochs this is exactly the paper's schedule. Measured reach with the defaults: budgets
    0.3 and 0.6 within fits of 3, 8 and 30 epochs (``tests/test_schedule.py``; the 3-epoch
    fit at 0.3 also on two replicas); the short schedules of BENCHMARKS.md. Pass
    ``warmup_epochs=0`` for a pre-trained model.

    No silent budget miss: if the budget is not met by ``finish_by`` of the fit's steps (or
    when ``fit`` ends, or stops early, before that), the callback completes the allocation:
    it lowers every keep-ratio logit by the same amount, the smallest that makes the hard
    configuration meet every budget (the groups keep their learned order of preference),
    freezes the masks, re-estimates the BatchNorm statistics and warns, saying what to change.
    The epoch logs then show ``dsa_completed`` = 1, :func:`dsa_tf.budget_status` reports it,
    and the remaining steps fine-tune. ``finish_by=None`` lets the allocation run on across
    several ``fit`` calls instead (a warning at the end of each fit says the budget is not
    met yet, and :func:`dsa_tf.strip` warns on an over-budget model).

    Stepped counts fill the budget: where groups keep multiples of a step (``round_to`` > 1,
    the default of a latency budget), rounding every group down to its step can leave much
    of the budget unused, so the masks freeze at counts fitted to it
    (:func:`dsa_tf.allocation.fitted_counts.fitted_counts`: every logit moved by the largest
    common shift that meets the budget, then single steps to the groups furthest below
    their ratios while it holds); the logits are set to the frozen counts. Under a latency
    budget whose table was measured on this device (the default when no table is given),
    the fitted allocation is timed against the unpruned network on the device and, while it
    measures over 97% of the budget (a margin for timing noise), fitted again to a tighter
    prediction, as the baseline allocators do (:mod:`dsa_tf.allocation.measured_latency`; a
    budget given in milliseconds is checked as its fraction of the unpruned model's
    predicted latency). It is never fitted to a looser prediction than the budget, so that
    :func:`dsa_tf.budget_status` and :func:`dsa_tf.strip` see the budget met;
    ``measured_latency`` then holds the frozen allocation's final timing (``unpruned_ms``,
    ``stripped_ms``, ``ratio``, ``budget``), and a measurement over the budget warns.

    The epoch logs (progress bar, History, CSVLogger) get ``dsa_phase`` (0 warm-up,
    1 allocation, 2 fine-tuning), ``dsa_beta2``, ``dsa_admm_iterations``, ``dsa_completed``
    and per constraint ``dsa_<resource>_expected`` (the resource at the current keep ratios)
    and ``dsa_<resource>_hard`` (the resource of the hard configuration, what
    :func:`dsa_tf.strip` gives), both as fractions. ``keep_ratio_trace`` lists, after every
    ADMM iteration this callback ran, ``(iteration, {group: keep ratio})``: how the
    allocation converged (``dsa-tf prune`` plots it as ``allocation_trace.png``).

    Defaults and the paper: three defaults depart from the paper (Ning et al., ECCV 2020),
    each an option with the measurement behind it: ``keep_signal="differences"``,
    ``weight_masks="top_k"``, and without warm-up (``warmup_epochs=0``, a pre-trained
    network) an allocation planned to end by a tenth of the fit. On the allocation
    benchmark (BENCHMARKS.md "The defaults chosen": CIFAR ResNet-14 at 25% of the FLOPs
    and a VGG-style network at 15% of the parameters, from scratch and from a pre-trained
    network, 5 seeds, every arm on one machine) the defaults are level with the uniform and
    magnitude allocators in all four cells (-0.84 to +0.27 points, baseline minus DSA;
    ahead of uniform beyond twice the standard error only on VGG from pre-trained weights)
    and behind them in none, where the paper's settings are 2-4.6 points behind both in
    three of the four cells (3 seeds).
    :meth:`paper` makes a callback with the paper's settings.

    Resuming: everything the allocation needs lives in the gates' variables (phase, beta2,
    the step counter, the ADMM state, the frozen masks); the position in ``alpha_data`` is
    recomputed from the ADMM iteration count and the schedule from the fit's epochs and
    steps. A fit resumed with ``keras.callbacks.BackupAndRestore`` or from a saved ``.keras``
    model (continued with a new DSACallback) carries on where the checkpoint was taken. List
    DSACallback before BackupAndRestore or ModelCheckpoint in ``callbacks``: the epoch's beta2
    growth and the batch's ADMM iteration then happen before the checkpoint is written. With
    ``keras.utils.set_random_seed`` and ``prune_to_budget(..., seed=...)`` fixed, two runs on
    CPU give the same allocation and weights.

    Failures: ``alpha_data`` is checked against the model and the loss when ``fit`` begins.
    A non-finite training loss, or a non-finite keep-ratio update, stops ``fit`` with a
    ``FloatingPointError`` naming the epoch, batch and phase; the failing update is not
    applied (the gates keep their last finite state), and a BackupAndRestore backup is kept
    for resuming.

    Distributed training (``tf.distribute.MirroredStrategy``, and
    ``MultiWorkerMirroredStrategy`` under tf_keras): call ``prune_to_budget`` and ``compile``
    inside ``strategy.scope()``. The gates' variables are then mirrored, and only this
    callback writes them, between weight steps (never inside a replica's step), so each write
    gives every replica the same value: the phase, beta2, the masks (drawn once per weight
    step from state that is identical everywhere) and the frozen masks. The Theta step runs
    on the global batch: ``alpha_data`` batches are global batches, each replica computes
    the gradient on its slice, and an all-reduce sums them (:func:`keep_ratio_gradients`);
    the ADMM update then runs on identical inputs on every worker, so the keep ratios and the
    ADMM state stay identical too. With several workers, every worker must read the same
    ``alpha_data`` batches in the same order (no unseeded shuffling). ``steps_per_execution``
    must be 1.

    Args:
        alpha_data: the held-out data for the keep-ratio (Theta) steps: a ``tf.data.Dataset``
            or a list (or other re-iterable) of ``(x, y)`` or ``(x, y, sample_weight)``
            batches. One-shot iterators and generators are refused (they would be exhausted
            after one pass).
        warmup_epochs: plain-training epochs before the allocation; None (default): 1/15 of
            the fit's steps (the paper's 20 of 300 epochs).
        update_every: weight steps per ADMM iteration; None (default): from the fit's length
            (the paper's 20 when the fit is long enough).
        finish_by: share of the fit's steps by which the allocation must be over (default
            0.6), or None to never complete it (see above).
        allocate_by: share of the fit's steps by which the ADMM cadence plans the allocation
            to end (the warm-up counts in it). None (default): a third (the paper's
            proportion, leaving two thirds to fine-tune), and a tenth with
            ``warmup_epochs=0`` (a pre-trained network), which leaves the final widths more
            of the fine-tuning: on CIFAR ResNet-14 at 25% of the FLOPs (3 fine-tuning epochs,
            3 seeds) it lifted DSA from 0.7-1.3 points behind the uniform and magnitude
            allocators to level with them, on the VGG network from 2.5-2.8 points behind to
            1.4-1.7 (within noise) (BENCHMARKS.md, "A shorter allocation when
            fine-tuning"). Ignored with ``update_every`` given. A planned end at or before
            the end of the warm-up warns: all the ADMM's iterations would run at one step.
        bn_batches: alpha_data batches for re-estimating the BatchNorm statistics when the
            masks freeze and at the end of every fine-tuning epoch (0: keep the moving
            averages as they are).
        loss: loss for the Theta steps, ``loss(y_true, y_pred)``; default: the model's
            compiled loss (a single loss).
        beta2_init: initial steepness of the keep probabilities (paper: 0.05).
        beta2_growth: per-epoch growth factor of beta2 during allocation (paper: 1.1).
        beta2_relative: measure beta2 in units of each group's spread (standard deviation)
            of log importances instead of absolutely (the paper's, default; see
            :func:`dsa_tf.allocation.keep_process.keep_probabilities`). With the other
            defaults, ``beta2_relative=True, beta2_init=2`` cut the VGG network's last
            convolution to 10-18 channels from a pre-trained network and lost 2.5-2.8 points
            to the baselines there (BENCHMARKS.md "The defaults chosen").
        theta_learning_rate: Adam learning rate of Theta (see :mod:`dsa_tf.allocation.admm`).
        rho1: budget penalty of the z steps. Default 1.0; the paper's 0.01 reaches high
            budgets slowly or not at all (measurements in :mod:`dsa_tf.allocation.admm`).
        rho2: penalty of Theta == z (paper: 0.01).
        loss_scale: fixed scale of the loss gradient (paper: 1e5); default None adapts it to
            the gradient's running RMS (see :mod:`dsa_tf.allocation.admm` for why).
        theta_batch_statistics: True (default, the paper's) runs the Theta steps' forward
            pass in training mode (BatchNorm with the alpha batch's statistics); False in
            inference mode under the sampled masks (moving statistics), where the keep-ratio
            gradients of groups behind a BatchNorm do not vanish (see
            :func:`dsa_tf.allocation.keep_gradients.keep_ratio_gradients`).
        keep_signal: what the Theta steps follow: "differences" (default: central
            differences of the loss in each group's keep ratio under common random numbers,
            which see the channels' presence through BatchNorm; two forward passes per group
            and alpha batch: :mod:`dsa_tf.allocation.keep_differences`; needs
            ``theta_batch_statistics=True``) or "straight_through" (the paper's
            straight-through gradient, :func:`dsa_tf.allocation.keep_gradients.
            keep_ratio_gradients`, which vanishes for groups behind a BatchNorm in training
            mode), or "top_k_differences" (the loss rise when each group drops its least
            important kept channels, every group at its top-k mask: the network the weights
            train under with ``weight_masks="top_k"``; one forward pass per group and alpha
            batch plus one: a DSA run in about two thirds of the time; from scratch on the
            allocation benchmark it chose very different VGG widths from the default's at
            the same accuracy, within 0.1-0.4 points of it; BENCHMARKS.md "A floor, top-k
            differences, a shorter allocation").
        keep_floor: no group's keep ratio goes below this share of the uniform keep ratio
            (the one ratio for all groups that meets the budget): Theta and z are projected
            onto it after every step. None: no floor (the paper's). With the other
            defaults, 0.75 moved DSA by -0.3 to +0.4 points in the four cells of the
            allocation benchmark (5 seeds, within noise; BENCHMARKS.md "A floor, top-k
            differences, a shorter allocation"): it removes the narrowest layers (VGG
            conv1 at 4-5 of 16), with no gain beyond the seed spread.
        weight_masks: the masks the weight steps of the allocation train under: "top_k"
            (default: each group's hard mask at its current keep ratio, the network the
            allocation would end with now; the Theta steps still see the sampled masks) or
            "sampled" (the paper's: each step's Bernoulli masks, channel dropout at rate
            1 - a). What it changes most: on the allocation benchmark, with
            ``keep_signal="differences"``, DSA from scratch on CIFAR ResNet-14 at 25% of the
            FLOPs went from level with the uniform allocator to ahead of it beyond twice the
            standard error (BENCHMARKS.md "Weight steps under top-k masks"); with the paper's
            other settings it took DSA on the VGG network from 2.6 points behind uniform to
            1.4 ahead from scratch, from 2.5 to 3.2 ahead from a pre-trained start, but left
            it 0.9-4.1 points behind on the ResNet (BENCHMARKS.md "The defaults chosen").
        verbose: 1 prints the schedule and a line at every phase change.
    """

    def __init__(self, alpha_data: Iterable, *, warmup_epochs: int | None = None,
                 update_every: int | None = None, finish_by: float | None = FINISH_BY,
                 allocate_by: float | None = None, bn_batches: int = BN_BATCHES,
                 loss: Any = None, beta2_init: float = 0.05,
                 beta2_growth: float = 1.1,
                 theta_learning_rate: float = admm.THETA_LEARNING_RATE,
                 rho1: float = admm.RHO1, rho2: float = admm.RHO2,
                 loss_scale: float | None = None, theta_batch_statistics: bool = True,
                 beta2_relative: bool = False, keep_floor: float | None = None,
                 keep_signal: str = "differences", weight_masks: str = "top_k",
                 verbose: int = 1):
        super().__init__()
        if allocate_by is None:
            allocate_by = PLANNED_END_PRETRAINED if warmup_epochs == 0 else PLANNED_END
        check_settings(warmup_epochs, update_every, finish_by, allocate_by)
        if bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0, got {bn_batches}.")
        check_reiterable(alpha_data)
        self.alpha_data = alpha_data
        self.warmup_epochs = None if warmup_epochs is None else int(warmup_epochs)
        self.update_every = None if update_every is None else int(update_every)
        self.finish_by = finish_by
        self.allocate_by = float(allocate_by)
        self.bn_batches = int(bn_batches)
        self._statistics = EpochStatistics(alpha_data, self.bn_batches, "alpha_data", self._say)
        self.loss = loss
        self.beta2_init = float(beta2_init)
        self.beta2_growth = float(beta2_growth)
        self.theta_learning_rate = float(theta_learning_rate)
        self.rho1, self.rho2, self.loss_scale = float(rho1), float(rho2), loss_scale
        self.theta_batch_statistics = bool(theta_batch_statistics)
        self.beta2_relative = bool(beta2_relative)
        if keep_floor is not None and not 0 < keep_floor < 1:
            raise ValueError(f"keep_floor must be in (0, 1) or None, got {keep_floor}.")
        self.keep_floor = keep_floor
        if keep_signal not in KEEP_SIGNALS:
            raise ValueError(f"keep_signal must be one of {KEEP_SIGNALS}, got {keep_signal!r}.")
        if keep_signal != "straight_through" and not self.theta_batch_statistics:
            raise ValueError(f"keep_signal={keep_signal!r} runs the Theta steps in training "
                             f"mode; with theta_batch_statistics=False pass "
                             f"keep_signal='straight_through'.")
        self.keep_signal = keep_signal
        if weight_masks not in WEIGHT_MASKS:
            raise ValueError(f"weight_masks must be one of {WEIGHT_MASKS}, got {weight_masks!r}.")
        self.weight_masks = weight_masks
        self.verbose = verbose
        self.schedule: Schedule | None = None
        self._batches = None
        self._epoch = 0
        self._steps_per_epoch: int | None = None
        self.keep_ratio_trace: list[tuple[int, dict[str, float]]] = []
        self.measured_latency: dict[str, float] | None = None

    @classmethod
    def paper(cls, alpha_data: Iterable, **kwargs: Any) -> DSACallback:
        """A DSACallback with the paper's settings where the defaults depart from them
        (:data:`PAPER`: straight-through keep-ratio gradients, sampled masks for the
        allocation's weight steps, the allocation planned to end by a third of the fit);
        ``kwargs`` set any argument, these included.

        Example:
            >>> callback = DSACallback.paper([(np.zeros((1, 4)), np.zeros(1))], verbose=0)
            >>> callback.keep_signal, callback.weight_masks, round(callback.allocate_by, 3)
            ('straight_through', 'sampled', 0.333)
        """
        return cls(alpha_data, **{**PAPER, **kwargs})

    # ----------------------------------------------------------------- set-up
    def on_train_begin(self, logs: dict | None = None) -> None:
        model = self.model
        self.gates = gates_of(model)
        if not self.gates:
            raise ValueError(f"DSACallback needs a model made by dsa_tf.prune_to_budget; "
                             f"{model.name!r} has no ChannelGate.")
        steps = _steps_per_execution(model)
        if steps > 1:
            raise ValueError(
                f"DSACallback needs steps_per_execution=1, the model was compiled with {steps}: "
                f"it draws each weight step's masks and counts the weight steps between ADMM "
                f"iterations in batch callbacks, which Keras calls once per {steps} steps.")
        for gate in self.gates:
            gate.relative_steepness = self.beta2_relative
        self.resources = list(self.gates[0].budget)
        self._resource_model()
        self._loss_fn = resolve_loss(model, self.loss, "DSACallback")
        check_alpha_data(self.alpha_data, model, self._loss_fn)
        self._batches = None  # positioned at the first ADMM iteration of this fit
        if getattr(self, "_traced_for", None) is not model:  # trace once per model
            self._update = tf.function(self._admm_update)
            self._resample = tf.function(lambda: resample_masks(self.model))
            self._top_k = tf.function(lambda: [g.mask.assign(g.top_k_mask()) for g in self.gates])
            self._sampled = tf.function(lambda: [g.mask.assign(g.sample()) for g in self.gates])
            self._traced_for = model
        if self._phase() == OPEN and self.gates[0].admm_step.numpy() == 0:
            for gate in self.gates:
                gate.beta2.assign(self.beta2_init)
        self._epochs = int(self.params.get("epochs") or 1)
        self._steps_per_epoch = self.params.get("steps")
        self._seen = 0
        self._statistics.begin_fit()
        self.schedule = None
        if self._steps_per_epoch:
            self._plan(int(self._steps_per_epoch))
        elif self._phase() == OPEN:
            self._say("the fit's steps per epoch are unknown: the first epoch is warm-up, and "
                      "the schedule is planned from its length")

    def _plan(self, steps_per_epoch: int, counted: bool = False) -> None:
        """Plans the schedule; ``counted``: the steps were counted in the first epoch, which
        therefore was warm-up."""
        schedule = plan_schedule(self._epochs, steps_per_epoch,
                                 warmup_epochs=self.warmup_epochs,
                                 update_every=self.update_every, finish_by=self.finish_by,
                                 allocate_by=self.allocate_by)
        if counted:
            schedule = dataclasses.replace(
                schedule, warmup_steps=max(schedule.warmup_steps, steps_per_epoch))
        self.schedule = schedule
        if self._phase() != FROZEN:
            total = self._epochs * steps_per_epoch
            per = ("" if schedule.iterations_per_update == 1
                   else f" ({schedule.iterations_per_update} iterations each)")
            deadline = ("" if schedule.finish_step is None
                        else f", complete by step {schedule.finish_step}")
            self._say(f"schedule for {total} weight steps: warm-up {schedule.warmup_steps} "
                      f"steps, an ADMM update every {schedule.update_every} steps{per}"
                      f"{deadline}")
            planned_end = round(total * self.allocate_by)
            if self.update_every is None and planned_end <= schedule.warmup_steps:
                warnings.warn(
                    f"DSACallback: the warm-up ({schedule.warmup_steps} of {total} steps) "
                    f"lasts until or past the planned end of the allocation (allocate_by="
                    f"{self.allocate_by} of the steps, step {planned_end}), so the ADMM's "
                    f"iterations (up to {ADMM_ITERATIONS}) run at once when it ends, on one "
                    f"set of weights. Lower warmup_epochs or raise allocate_by.",
                    stacklevel=2)

    def _resource_model(self) -> None:
        """The resource function of the constraints, of the keep ratios in the gates' order."""
        plan = analyze(self.model, self.gates[0].exclude)
        self.resource = ResourceModel(plan, self.gates[0].latency_table).function(
            self.resources, order=gate_order(plan, self.gates))
        self.budgets = tf.constant([self.gates[0].budget[n] for n in self.resources], tf.float32)
        self.floor = None
        if self.keep_floor is not None:
            ratio = self.keep_floor * self._uniform_ratio()
            self.floor = tf.constant(np.log(ratio / (1 - ratio)), tf.float32)

    def _uniform_ratio(self) -> float:
        """The keep ratio r whose configuration (every group at r) meets every budget
        exactly, by bisection on the resource function."""
        ones = tf.ones([len(self.gates)], tf.float32)
        return largest_passing(
            lambda r: bool(tf.reduce_all(self.resource(r * ones) <= self.budgets)), 0.0, 1.0,
            halvings=40)

    # ------------------------------------------------------------- the phases
    def _phase(self) -> int:
        return int(self.gates[0].mode.numpy())

    def _set_phase(self, phase: int) -> None:
        for gate in self.gates:
            gate.mode.assign(phase)

    def _step(self, batch: int) -> int:
        """The weight step of the fit's schedule (epochs counted from the fit's first)."""
        return self._epoch * int(self._steps_per_epoch or 0) + batch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._phase() == OPEN and self.schedule is not None \
                and self._step(batch) >= self.schedule.warmup_steps:
            refresh_importance(self.model)
            self._set_phase(STOCHASTIC)
            self._say(f"allocation starts at epoch {self._epoch + 1}, step {batch + 1}")
        if self._phase() == STOCHASTIC:
            self._resample()
            if self.weight_masks == "top_k":
                self._top_k()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._seen = max(self._seen, batch + 1)
        phase = self._phase()
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(loss)):
            raise FloatingPointError(self._failure(f"the training loss is {np.asarray(loss)}",
                                                   batch))
        self._statistics.batch_end(self.model, batch, phase == FROZEN, self._steps_per_epoch,
                                   self._epoch)
        if phase != STOCHASTIC or self.schedule is None:
            return
        if int(self.gates[0].step.numpy()) % self.schedule.update_every == 0:
            if self.weight_masks == "top_k":
                self._sampled()  # the step's sampled masks again (same noise)
            for i in range(self.schedule.iterations_per_update):
                if i:  # each iteration of an update on its own mask sample
                    self._resample()
                self._iterate(batch)
                if self._meets_budget():
                    self._freeze(BY_ALLOCATION)
                    return
        finish = self.schedule.finish_step
        if finish is not None and self._step(batch) + 1 >= finish:
            self._complete(f"by step {finish} of the fit ({self.finish_by:.0%} of its steps)")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.schedule is None and epoch == 0:  # steps per epoch counted in the first epoch
            self._steps_per_epoch = self._seen
            self._plan(self._seen, counted=True)
        self._statistics.epoch_end(self.model, epoch)
        if self._phase() == STOCHASTIC:
            for gate in self.gates:
                gate.beta2.assign(gate.beta2 * self.beta2_growth)
            ends = epoch + 1 >= self._epochs or getattr(self.model, "stop_training", False)
            if ends and self.finish_by is not None:
                self._complete("when fit ended")
        if logs is not None:
            logs["dsa_phase"] = float(self._phase())
            logs["dsa_beta2"] = float(self.gates[0].beta2.numpy())
            logs["dsa_admm_iterations"] = float(self.gates[0].admm_step.numpy())
            logs["dsa_completed"] = float(int(self.gates[0].frozen_by.numpy()) == BY_COMPLETION)
            expected, hard = self._ratios(hard=False), self._ratios(hard=True)
            for name in self.resources:
                logs[f"dsa_{name}_expected"] = expected[name]
                logs[f"dsa_{name}_hard"] = hard[name]

    def on_train_end(self, logs: dict | None = None) -> None:
        self._statistics.train_end(self.model)
        if self._phase() != STOCHASTIC:
            return
        if self.finish_by is not None:
            self._complete("when fit ended")
            return
        hard = self._ratios(hard=True)
        warnings.warn(
            f"DSACallback: fit ended in the allocation phase, the budget not met yet "
            f"({self._over_budget(hard)}; finish_by=None). Continue with another fit (the "
            f"allocation resumes), or strip(gated) gives an over-budget model.", stacklevel=2)

    # ------------------------------------------------------------ the updates
    def _iterate(self, batch: int) -> None:
        if self._batches is None:
            self._batches = alpha_batches(self.alpha_data,
                                          int(self.gates[0].admm_step.numpy()))
        x, y = next(self._batches)[:2]
        if not bool(self._update(x, y)):
            if self.weight_masks == "top_k":
                self._top_k()  # the masks the weight step trained under, as it left them
            raise FloatingPointError(self._failure(
                "the keep-ratio update on the next alpha_data batch is not finite (it was not "
                "applied)", batch))
        self.keep_ratio_trace.append((int(self.gates[0].admm_step.numpy()), {
            gate.group: float(gate.keep_ratio()) for gate in self.gates}))

    def _meets_budget(self, hard: dict[str, float] | None = None) -> bool:
        hard = hard or self._ratios(hard=True)
        return all(hard[n] <= self.gates[0].budget[n] for n in self.resources)

    def _over_budget(self, hard: dict[str, float]) -> str:
        return ", ".join(f"{n} {hard[n]:.4f} of a {self.gates[0].budget[n]:.4f} budget"
                         for n in self.resources)

    def _freeze(self, frozen_by: int) -> None:
        """Freezes the top-k masks (stepped counts fitted to the budget), re-estimates the
        BatchNorm statistics under them."""
        refresh_importance(self.model)
        if any(gate.round_to > 1 for gate in self.gates):
            self._fit_counts()
        self._top_k()
        for gate in self.gates:
            gate.frozen_by.assign(frozen_by)
        self._set_phase(FROZEN)
        self._statistics.reestimate(self.model)
        hard = self._ratios(hard=True)
        summary = ", ".join(f"{n} {hard[n]:.4f} <= {self.gates[0].budget[n]:.4f}"
                            for n in self.resources)
        how = "budget met" if frozen_by == BY_ALLOCATION else "allocation completed"
        self._say(f"{how} after {int(self.gates[0].admm_step.numpy())} ADMM iterations "
                  f"({summary}); masks frozen, fine-tuning")
        if "latency" in self.resources:
            self._time_latency()

    def _counting(self) -> tuple[Any, ResourceModel, np.ndarray, dict[str, Any]]:
        """The gated model's plan, its resource model, each gate's index in
        ``plan.prunable``, and the gates' logits, channels, min_channels and steps (gate
        order), as :func:`dsa_tf.allocation.fitted_counts.fitted_counts` takes them."""
        plan = analyze(self.model, self.gates[0].exclude)
        gates = {"logits": np.array([float(gate.theta.numpy()) for gate in self.gates]),
                 "channels": np.array([gate.channels for gate in self.gates]),
                 "min_channels": self.gates[0].min_channels,
                 "steps": np.array([gate.round_to for gate in self.gates])}
        return (plan, ResourceModel(plan, self.gates[0].latency_table),
                gate_order(plan, self.gates), gates)

    @staticmethod
    def _meets(resources: ResourceModel, order: np.ndarray, target: dict[str, float]
               ) -> Callable[[np.ndarray], bool]:
        """Whether counts in gate order meet ``target`` (fractions), as the plan counts."""
        def meets_target(counts: np.ndarray) -> bool:
            in_plan = np.zeros(len(order), np.int64)
            in_plan[order] = counts
            return meets(resources, target, in_plan)

        return meets_target

    def _fit_counts(self) -> None:
        """Sets the keep-ratio logits to counts fitted to the budget, timed on this device
        under a latency budget whose table was measured here (see the class docstring)."""
        plan, resources, order, gates = self._counting()
        steps, min_channels = gates["steps"], gates["min_channels"]
        names = [plan.prunable[k].name for k in order]
        rounded = self._ratios(hard=True)
        self._say("fitting the kept counts to the budget (each group rounded down to its "
                  "step: " + ", ".join(f"{n} {rounded[n]:.4f} of {self.gates[0].budget[n]:.4f}"
                                        for n in self.resources) + ")")

        def allocate(target: dict[str, float]) -> dict[str, np.ndarray]:
            counts = fitted_counts(**gates, meets=self._meets(resources, order, target))
            return {name: np.flatnonzero(keep_process.hard_mask(
                        tf.convert_to_tensor(gate.importance), count / gate.channels,
                        gate.min_channels, gate.round_to, gate.blocks).numpy())
                    for name, gate, count in zip(names, self.gates, counts)}

        budget = self.gates[0].budget
        if "latency" in self.resources and measured_here(resources.latency.table):
            round_to = np.zeros(len(plan.prunable), np.int64)
            round_to[order] = steps
            keep = within_measured_latency(
                self.model, budget, "latency", resources, budget, allocate,
                min_channels=min_channels, round_to=round_to, exclude=self.gates[0].exclude,
                loosen=False, progress=self._say if self.verbose else None)
        else:
            keep = allocate(budget)
        set_keep_ratios(self.model, {gate.group: len(keep[name]) / gate.channels
                                     for name, gate in zip(names, self.gates)})

    def _time_latency(self) -> None:
        """Under a latency budget whose table was measured on this device: times the frozen
        allocation's stripped model against the unpruned network
        (:func:`dsa_tf.allocation.measured_latency.time_against_unpruned`), records it in
        ``measured_latency``, says it, and warns if it measures over the budget (the widths
        stay: the weights are trained for them)."""
        table = LatencyTable.load(self.gates[0].latency_table)
        if not measured_here(table):
            return
        full_ms, ms = time_against_unpruned(self.model, table)
        budget = self.gates[0].budget["latency"]
        self.measured_latency = {"unpruned_ms": full_ms, "stripped_ms": ms,
                                 "ratio": ms / full_ms, "budget": budget}
        self._say(f"the allocation measures {ms:.3f} ms on this device, {ms / full_ms:.3f}x "
                  f"the unpruned network's {full_ms:.3f} ms (latency budget {budget:.3f})")
        if ms / full_ms > budget:
            warnings.warn(
                f"DSACallback: the allocation meets the latency budget as the table predicts "
                f"it, but measures {ms / full_ms:.3f}x the unpruned network's latency on this "
                f"device, over the budget's {budget:.3f}. Timings vary with the machine's "
                f"load; if it repeats, prune again with a lower budget, or use a baseline "
                f"allocator, which re-allocates until the measurement meets the budget.",
                stacklevel=2)

    def _complete(self, when: str) -> None:
        """Meets the budget now: lowers every keep-ratio logit by the smallest common shift
        whose hard configuration meets every budget, freezes and warns."""
        before = self._over_budget(self._ratios(hard=True))
        _, resources, order, gates = self._counting()
        thetas = gates["logits"]
        high = -largest_shift(**gates, meets=self._meets(resources, order,
                                                        self.gates[0].budget))
        while True:  # the float32 logits as assigned must meet it, not only the bisection's
            for gate, theta in zip(self.gates, thetas):
                gate.theta.assign(theta - high)
            if self._meets_budget():
                break
            high += 1e-4
        iterations = int(self.gates[0].admm_step.numpy())
        self._freeze(BY_COMPLETION)
        warnings.warn(
            f"DSACallback: the allocation had not met the budget {when} ({before} after "
            f"{iterations} ADMM iterations). It was completed by lowering every keep-ratio "
            f"logit by {high:.3f} (the groups keep their learned order), masks frozen. For an "
            f"allocation that meets the budget by itself, give fit more epochs, or leave "
            f"warmup_epochs and update_every at None so the schedule follows the fit.",
            stacklevel=2)

    def _ratios(self, hard: bool) -> dict[str, float]:
        ratios = []
        for gate in self.gates:
            a = tf.sigmoid(tf.convert_to_tensor(gate.theta))
            if hard:
                a = tf.cast(keep_process.kept_count(a, gate.channels, gate.min_channels,
                                                    gate.round_to), tf.float32) / gate.channels
            ratios.append(a)
        values = self.resource(tf.stack(ratios)).numpy()
        return {name: float(v) for name, v in zip(self.resources, values)}

    def _admm_update(self, x: Any, y: Any) -> tf.Tensor:
        """One ADMM iteration on the batch (x, y), applied only if its result is finite.

        The Theta step's training-mode forward pass would update the BatchNorm moving
        statistics with the alpha batch under a random mask: they are restored, as are the
        model's other non-trainable variables.

        Returns:
            Whether it was finite. If not, the gates are left as they were.
        """
        in_gates = {id(v) for gate in self.gates for v in gate.weights}
        others = [v for v in self.model.non_trainable_variables if id(v) not in in_gates]
        saved = [tf.identity(tf.convert_to_tensor(v)) for v in others]
        if self.keep_signal == "differences":
            grads = keep_ratio_differences(self.model, self._loss_fn, x, y)
        elif self.keep_signal == "top_k_differences":
            grads = keep_ratio_top_k_differences(self.model, self._loss_fn, x, y)
        else:
            grads = keep_ratio_gradients(self.model, self._loss_fn, x, y,
                                         batch_statistics=self.theta_batch_statistics)
        with tf.control_dependencies(grads):
            for variable, value in zip(others, saved):
                variable.assign(value)
        thetas = [_keras.tf_variable(gate.theta) for gate in self.gates]
        first = self.gates[0]
        state = admm.ADMMState(
            theta=tf.stack(thetas), z=self._stack("z"), u1=tf.convert_to_tensor(first.u1),
            u2=self._stack("u2"), adam_m=self._stack("adam_m"), adam_v=self._stack("adam_v"),
            loss_grad_sq=tf.convert_to_tensor(first.loss_grad_sq),
            step=tf.convert_to_tensor(first.admm_step))
        new = admm.admm_iteration(state, tf.stack(grads), self.resource, self.budgets,
                                  theta_learning_rate=self.theta_learning_rate,
                                  rho1=self.rho1, rho2=self.rho2, loss_scale=self.loss_scale,
                                  floor=self.floor)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in new])

        def commit() -> tf.Tensor:
            for k, gate in enumerate(self.gates):
                for name in ("theta", "z", "u2", "adam_m", "adam_v"):
                    getattr(gate, name).assign(getattr(new, name)[k])
                gate.u1.assign(new.u1)
                gate.loss_grad_sq.assign(new.loss_grad_sq)
                gate.admm_step.assign(new.step)
            return tf.constant(True)

        return tf.cond(finite, commit, lambda: tf.constant(False))

    def _stack(self, name: str) -> tf.Tensor:
        return tf.stack([tf.convert_to_tensor(getattr(g, name)) for g in self.gates])

    def _failure(self, what: str, batch: int) -> str:
        return (f"DSACallback stopped fit: {what} at epoch {self._epoch + 1}, batch {batch + 1}, "
                f"in the {PHASE_NAMES[self._phase()]} phase (after "
                f"{int(self.gates[0].admm_step.numpy())} ADMM iterations). The gates keep their "
                f"last finite state; resume from a checkpoint (keras.callbacks.BackupAndRestore "
                f"keeps its backup) with a lower learning rate or clean data.")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"DSA: {message}", flush=True)


def _steps_per_execution(model: Any) -> int:
    value = getattr(model, "steps_per_execution", None)
    if value is None:
        value = getattr(model, "_steps_per_execution", None)
    if value is None:
        return 1
    return int(value.numpy() if hasattr(value, "numpy") else value)
