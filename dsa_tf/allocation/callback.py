"""DSACallback: DSA's budgeted allocation of channels inside an ordinary ``model.fit``.

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20, input_shape=(8, 8, 3))
    >>> gated = dsa_tf.prune_to_budget(model, budget=0.5)
    >>> gated.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(64, 8, 8, 3).astype("float32"), np.arange(64) % 10
    >>> data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    >>> callback = dsa_tf.DSACallback(data, warmup_epochs=0, update_every=1, verbose=0)
    >>> history = gated.fit(data, epochs=20, callbacks=[callback], verbose=0)
    >>> history.history["dsa_flops_hard"][-1] <= 0.5
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.allocation import admm
from dsa_tf.allocation.gated_model import gates_of, refresh_importance, resample_masks
from dsa_tf.allocation.gated_strip import gate_order
from dsa_tf.allocation.gates import FROZEN, OPEN, STOCHASTIC
from dsa_tf.allocation.keep_gradients import keep_ratio_gradients, per_example_loss
from dsa_tf.structure.graph import analyze

PHASES = {OPEN: "warm-up", STOCHASTIC: "allocation", FROZEN: "fine-tuning"}


class DSACallback(_keras.default_keras().callbacks.Callback):
    """Learns every group's keep ratio under the budget while ``fit`` trains the weights.

    Phases (stored in the gates' ``mode`` variables, so checkpoints carry them):

    1. warm-up, for ``warmup_epochs`` epochs: plain training, gates open;
    2. allocation: before every weight step each gate draws one DSA Bernoulli mask for its
       whole group (:func:`dsa_tf.allocation.gated_model.resample_masks`); every
       ``update_every`` weight steps, one ADMM iteration
       (:func:`dsa_tf.allocation.admm.admm_iteration`): a Theta step on the next batch of
       ``alpha_data`` (repeated as needed), 50 z steps, the dual update. The steepness beta2
       starts at 0.05 and grows 1.1x per epoch. Base importances are refreshed from the
       BatchNorm |gamma| (or filter L1 norms) before every weight step. The Theta gradient
       is DSA's straight-through estimate (:func:`keep_ratio_gradients`);
    3. fine-tuning: as soon as the hard configuration (the top-k channels of each group,
       k = ``ChannelGate.kept_count()``, honouring ``round_to``) meets every budget, the masks
       are frozen and logged, and training goes on with fixed masks to the end of ``fit``.

    How long the allocation takes: the ADMM reaches budgets from 0.25 to 0.9 within 150
    iterations in simulation (see :mod:`dsa_tf.allocation.admm`), so within
    ``150 * update_every`` weight steps from the start of the allocation, i.e.
    ``150 * update_every / steps_per_epoch`` epochs (CIFAR-10, batch 128, 90% split,
    update_every=20: about 8.5 epochs).

    The epoch logs (progress bar, History, CSVLogger) get ``dsa_phase`` (0 warm-up,
    1 allocation, 2 fine-tuning), ``dsa_beta2``, and per constraint ``dsa_<resource>_expected``
    (the resource at the current keep ratios) and ``dsa_<resource>_hard`` (the resource of
    the hard configuration, what :func:`dsa_tf.strip` gives), both as fractions.

    Resuming: everything the allocation needs lives in the gates' variables (phase, beta2,
    the step counter, the ADMM state, the frozen masks); the position in ``alpha_data`` is
    recomputed from the ADMM iteration count. A fit resumed with
    ``keras.callbacks.BackupAndRestore`` or from a saved ``.keras`` model (continued with a
    new DSACallback) carries on where the checkpoint was taken. List DSACallback before
    BackupAndRestore or ModelCheckpoint in ``callbacks``: the epoch's beta2 growth and the
    batch's ADMM iteration then happen before the checkpoint is written. With
    ``keras.utils.set_random_seed`` and ``prune_to_budget(..., seed=...)`` fixed, two runs on
    CPU give the same allocation and weights.

    Failures: ``alpha_data`` is checked against the model and the loss when ``fit`` begins.
    A non-finite training loss, or a non-finite keep-ratio update, stops ``fit`` with a
    ``FloatingPointError`` naming the epoch, batch and phase; the failing update is not
    applied (the gates keep their last finite state, and the BatchNorm statistics the Theta
    step touched are restored), and a BackupAndRestore backup is kept for resuming.

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
        warmup_epochs: plain-training epochs before the allocation (paper: 20 of 300).
        update_every: weight steps per ADMM iteration (paper: 20).
        loss: loss for the Theta steps, ``loss(y_true, y_pred)``; default: the model's
            compiled loss (a single loss).
        beta2_init: initial steepness of the keep probabilities (paper: 0.05).
        beta2_growth: per-epoch growth factor of beta2 during allocation (paper: 1.1).
        theta_learning_rate: Adam learning rate of Theta (see :mod:`dsa_tf.allocation.admm`).
        rho1: budget penalty of the z steps. Default 1.0; the paper's 0.01 reaches high
            budgets slowly or not at all (measurements in :mod:`dsa_tf.allocation.admm`).
        rho2: penalty of Theta == z (paper: 0.01).
        loss_scale: fixed scale of the loss gradient (paper: 1e5); default None adapts it to
            the gradient's running RMS (see :mod:`dsa_tf.allocation.admm` for why).
        verbose: 1 prints a line at every phase change.
    """

    def __init__(self, alpha_data: Iterable, *, warmup_epochs: int = 20, update_every: int = 20,
                 loss: Any = None, beta2_init: float = 0.05, beta2_growth: float = 1.1,
                 theta_learning_rate: float = admm.THETA_LEARNING_RATE,
                 rho1: float = admm.RHO1, rho2: float = admm.RHO2,
                 loss_scale: float | None = None, verbose: int = 1):
        super().__init__()
        if warmup_epochs < 0 or update_every < 1:
            raise ValueError("warmup_epochs must be >= 0 and update_every >= 1.")
        if isinstance(alpha_data, Iterator) or not isinstance(alpha_data, Iterable):
            why = "one-shot: exhausted after one pass" if isinstance(alpha_data, Iterator) \
                else "not iterable"
            raise ValueError(f"alpha_data must be read again and again, but the given "
                             f"{type(alpha_data).__name__} is {why}. Pass a tf.data.Dataset "
                             f"or a list of (x, y) batches.")
        self.alpha_data = alpha_data
        self.warmup_epochs = int(warmup_epochs)
        self.update_every = int(update_every)
        self.loss = loss
        self.beta2_init = float(beta2_init)
        self.beta2_growth = float(beta2_growth)
        self.theta_learning_rate = float(theta_learning_rate)
        self.rho1, self.rho2, self.loss_scale = float(rho1), float(rho2), loss_scale
        self.verbose = verbose
        self._batches = None
        self._epoch = 0

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
        self.resources = list(self.gates[0].budget)
        self._resource_model()
        self._loss_fn = self._resolve_loss()
        self._check_alpha_data()
        self._batches = None  # positioned at the first ADMM iteration of this fit
        if getattr(self, "_traced_for", None) is not model:  # trace once per model
            self._update = tf.function(self._admm_update)
            self._resample = tf.function(lambda: resample_masks(self.model))
            self._traced_for = model
        if self._phase() == OPEN and self.gates[0].admm_step.numpy() == 0:
            for gate in self.gates:
                gate.beta2.assign(self.beta2_init)

    def _resource_model(self) -> None:
        """The normalised resource model of each constraint, in the gates' order."""
        plan = analyze(self.model, self.gates[0].exclude)
        perm = gate_order(plan, self.gates)
        forms = [getattr(plan, name) for name in self.resources]
        full = [form(np.ones(len(plan.prunable))) for form in forms]
        self.A = tf.constant(np.stack([f.A[np.ix_(perm, perm)] / t for f, t in zip(forms, full)]),
                             tf.float32)
        self.b = tf.constant(np.stack([f.b[perm] / t for f, t in zip(forms, full)]), tf.float32)
        self.c = tf.constant([f.c / t for f, t in zip(forms, full)], tf.float32)
        self.budgets = tf.constant([self.gates[0].budget[n] for n in self.resources], tf.float32)

    def _resolve_loss(self) -> Any:
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if loss is None:
            raise ValueError("DSACallback needs a loss: compile the model with one, or pass "
                             "loss=... to DSACallback.")
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError("The model has several losses; pass DSACallback(loss=...) for the "
                             "keep-ratio steps.")
        loss = _keras.keras_of(self.model).losses.get(loss) if isinstance(loss, str) else loss
        return per_example_loss(loss)

    def _check_alpha_data(self) -> None:
        """Checks alpha_data's first batch against the model's inputs and the loss, so that a
        mismatch is reported when ``fit`` begins rather than at the first ADMM iteration."""
        try:
            first = next(iter(self.alpha_data))
        except StopIteration:
            raise ValueError("alpha_data yielded no batch.") from None
        if not isinstance(first, (tuple, list)) or not 2 <= len(first) <= 3:
            raise ValueError(f"alpha_data must yield (x, y) or (x, y, sample_weight) batches; "
                             f"its first batch is {_describe(first)}.")
        x, y = first[:2]
        inputs = _keras.model_inputs(self.model)
        names = [_keras.input_name(t) for t in inputs]
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"alpha_data's x has keys {sorted(x)}; the model's inputs are "
                                 f"{names} (missing {missing}).")
            given = [x[n] for n in names]
        else:
            given = tf.nest.flatten(x)
        if len(given) != len(inputs):
            raise ValueError(f"alpha_data's x is {_describe(x)}; the model has {len(inputs)} "
                             f"input(s) {names}.")
        for name, tensor, value in zip(names, inputs, given):
            expected = _keras.shape_of(tensor)
            if not tf.TensorShape(expected).is_compatible_with(_shape(value)):
                raise ValueError(f"alpha_data's x for the model input {name!r} has shape "
                                 f"{_shape(value)}; the model expects {expected} (None: any "
                                 f"size).")
        output = self.model(x, training=False)
        try:
            self._loss_fn(y, output)
        except (ValueError, TypeError, tf.errors.OpError) as error:
            raise ValueError(f"The keep-ratio loss fails on alpha_data's first batch: y is "
                             f"{_describe(y)}, the model's output {_describe(output)}. "
                             f"{type(error).__name__}: {error}") from error

    def _alpha_batches(self, start: int) -> Iterator:
        """An endless iterator over alpha_data from batch ``start`` on. One batch is read per
        ADMM iteration, so starting at the iteration count makes a resumed fit read the
        batches the uninterrupted one would have read."""
        data = self.alpha_data
        if isinstance(data, tf.data.Dataset):
            return iter(data.repeat().skip(start))
        if isinstance(data, Sized) and len(data):
            start %= len(data)

        def forever() -> Iterator:
            while True:
                empty = True
                for batch in data:
                    empty = False
                    yield batch
                if empty:
                    raise ValueError("alpha_data yielded no batch.")

        return itertools.islice(forever(), start, None)

    # ------------------------------------------------------------- the phases
    def _phase(self) -> int:
        return int(self.gates[0].mode.numpy())

    def _set_phase(self, phase: int) -> None:
        for gate in self.gates:
            gate.mode.assign(phase)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch  # for error messages only
        if self._phase() == OPEN and epoch >= self.warmup_epochs:
            refresh_importance(self.model)
            self._set_phase(STOCHASTIC)
            self._say(f"allocation starts at epoch {epoch + 1}")

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._phase() == STOCHASTIC:
            self._resample()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(loss)):
            raise FloatingPointError(self._failure(f"the training loss is {np.asarray(loss)}",
                                                   batch))
        if self._phase() != STOCHASTIC or int(self.gates[0].step.numpy()) % self.update_every:
            return
        if self._batches is None:
            self._batches = self._alpha_batches(int(self.gates[0].admm_step.numpy()))
        x, y = next(self._batches)[:2]
        if not bool(self._update(x, y)):
            raise FloatingPointError(self._failure(
                "the keep-ratio update on the next alpha_data batch is not finite (it was not "
                "applied)", batch))
        hard = self._ratios(hard=True)
        if all(hard[n] <= self.gates[0].budget[n] for n in self.resources):
            refresh_importance(self.model)
            for gate in self.gates:
                gate.mask.assign(gate.top_k_mask())
            self._set_phase(FROZEN)
            summary = ", ".join(f"{n} {hard[n]:.4f} <= {self.gates[0].budget[n]:.4f}"
                                for n in self.resources)
            self._say(f"budget met after {int(self.gates[0].admm_step.numpy())} ADMM "
                      f"iterations ({summary}); masks frozen, fine-tuning")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._phase() == STOCHASTIC:
            for gate in self.gates:
                gate.beta2.assign(gate.beta2 * self.beta2_growth)
        if logs is not None:
            logs["dsa_phase"] = float(self._phase())
            logs["dsa_beta2"] = float(self.gates[0].beta2.numpy())
            expected, hard = self._ratios(hard=False), self._ratios(hard=True)
            for name in self.resources:
                logs[f"dsa_{name}_expected"] = expected[name]
                logs[f"dsa_{name}_hard"] = hard[name]

    # ------------------------------------------------------------ the updates
    def _ratios(self, hard: bool) -> dict[str, float]:
        ratios = []
        for gate in self.gates:
            a = gate.keep_ratio()
            if hard:
                a = tf.cast(gate.kept_count(), tf.float32) / gate.channels
            ratios.append(a)
        values = admm.resource_ratios(tf.stack(ratios), self.A, self.b, self.c).numpy()
        return {name: float(v) for name, v in zip(self.resources, values)}

    def _admm_update(self, x: Any, y: Any) -> tf.Tensor:
        """One ADMM iteration on the batch (x, y), applied only if its result is finite.

        Returns:
            Whether it was finite. If not, the gates are left as they were, and the model's
            other non-trainable variables (BatchNorm statistics, which the Theta step's
            training-mode forward pass updates) are restored.
        """
        in_gates = {id(v) for gate in self.gates for v in gate.weights}
        others = [v for v in self.model.non_trainable_variables if id(v) not in in_gates]
        saved = [tf.identity(tf.convert_to_tensor(v)) for v in others]
        grads = keep_ratio_gradients(self.model, self._loss_fn, x, y)
        thetas = [_keras.tf_variable(gate.theta) for gate in self.gates]
        first = self.gates[0]
        state = admm.ADMMState(
            theta=tf.stack(thetas), z=self._stack("z"), u1=tf.convert_to_tensor(first.u1),
            u2=self._stack("u2"), adam_m=self._stack("adam_m"), adam_v=self._stack("adam_v"),
            loss_grad_sq=tf.convert_to_tensor(first.loss_grad_sq),
            step=tf.convert_to_tensor(first.admm_step))
        new = admm.admm_iteration(state, tf.stack(grads), self.A, self.b, self.c, self.budgets,
                                  theta_learning_rate=self.theta_learning_rate,
                                  rho1=self.rho1, rho2=self.rho2, loss_scale=self.loss_scale)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in new])

        def commit() -> tf.Tensor:
            for k, gate in enumerate(self.gates):
                for name in ("theta", "z", "u2", "adam_m", "adam_v"):
                    getattr(gate, name).assign(getattr(new, name)[k])
                gate.u1.assign(new.u1)
                gate.loss_grad_sq.assign(new.loss_grad_sq)
                gate.admm_step.assign(new.step)
            return tf.constant(True)

        def restore() -> tf.Tensor:
            for variable, value in zip(others, saved):
                variable.assign(value)
            return tf.constant(False)

        return tf.cond(finite, commit, restore)

    def _stack(self, name: str) -> tf.Tensor:
        return tf.stack([tf.convert_to_tensor(getattr(g, name)) for g in self.gates])

    def _failure(self, what: str, batch: int) -> str:
        return (f"DSACallback stopped fit: {what} at epoch {self._epoch + 1}, batch {batch + 1}, "
                f"in the {PHASES[self._phase()]} phase (after "
                f"{int(self.gates[0].admm_step.numpy())} ADMM iterations). The gates keep their "
                f"last finite state; resume from a checkpoint (keras.callbacks.BackupAndRestore "
                f"keeps its backup) with a lower learning rate or clean data.")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"DSA: {message}", flush=True)


def _shape(value: Any) -> tuple:
    """The shape of an array, tensor or nested list, as a tuple."""
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _describe(value: Any) -> str:
    """A batch or part of one, for error messages: its structure and shapes."""
    if isinstance(value, (tuple, list)):
        parts = ", ".join(_describe(v) for v in value)
        return f"a {type(value).__name__} of {len(value)} ({parts})"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(value)}"
    return f"an array of shape {_shape(value)}"


def _steps_per_execution(model: Any) -> int:
    value = getattr(model, "steps_per_execution", None)
    if value is None:
        value = getattr(model, "_steps_per_execution", None)
    if value is None:
        return 1
    return int(value.numpy() if hasattr(value, "numpy") else value)
