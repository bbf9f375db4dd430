"""Reproducible allocations: the same seeds give the same run; a fit interrupted in any phase
and resumed from an epoch backup of BackupAndRestore, or from a .keras file, ends exactly where
an uninterrupted one ends; resumed from a mid-epoch backup, it still meets the budget."""

import keras_state
import numpy as np
import pytest

import dsa_tf
from dsa_tf import _keras
from dsa_tf.allocation.gated_model import gates_of, resample_masks
from dsa_tf.allocation.gated_strip import gate_keep
from dsa_tf.allocation.gates import FROZEN, OPEN, STOCHASTIC

from test_callback import _data, _small_net

# 8 weight steps per epoch, one ADMM iteration each, one warm-up epoch; from keep ratios of
# 0.95 the budget is reached in the second epoch of allocation: the run has all three phases.
EPOCHS = 4
BUDGET = 0.85


class Interrupt(_keras.default_keras().callbacks.Callback):
    """Raises at the end of one batch, as a crash would, and records the DSA phase then."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = self.phase = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.phase = int(gates_of(self.model)[0].mode.numpy())
            raise RuntimeError("interrupted")


def _gated(keras, seed=1):
    """The gated model as a new process would build it (same layer and group names)."""
    keras_state.reset(keras)
    keras.utils.set_random_seed(seed)
    gated = dsa_tf.prune_to_budget(_small_net(keras), BUDGET, seed=seed)
    for gate in gates_of(gated):  # as ChannelGate(theta_init=3.0): a shorter allocation
        gate.theta.assign(3.0)
        gate.z.assign(3.0)
    gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return gated


def _dsa():
    # alpha_data has 3 batches: a resumed fit must find its place in it (8 per epoch). No
    # deadline: these fits end, or are interrupted, in the allocation on purpose.
    return dsa_tf.DSACallback(_data(48, seed=1), warmup_epochs=1, update_every=1,
                              finish_by=None, verbose=0)


def _fit(gated, callbacks=(), epochs=EPOCHS, dsa=None):
    return gated.fit(_data(), epochs=epochs, callbacks=[dsa or _dsa(), *callbacks],
                     verbose=0).history


def _outcome(gated):
    """The kept channels of every group, every weight and DSA variable of the model, and the
    weights of the stripped model."""
    keep = {name: kept.tolist() for name, kept in gate_keep(dsa_tf.analyze(gated)).items()}
    small = dsa_tf.strip(gated)
    return keep, [w.numpy() for w in gated.weights], [w.numpy() for w in small.weights]


def _assert_same(outcome, expected):
    assert outcome[0] == expected[0]
    for weights, expected_weights in zip(outcome[1:], expected[1:]):
        assert len(weights) == len(expected_weights)
        assert all(np.array_equal(a, b) for a, b in zip(weights, expected_weights))


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted run: its history and outcome."""
    gated = _gated(_keras.default_keras())
    history = _fit(gated)
    return history, _outcome(gated)


def test_same_seeds_give_the_same_allocation_and_stripped_model(keras, reference):
    history, outcome = reference
    assert history["dsa_phase"][0] == OPEN and history["dsa_phase"][-1] == FROZEN
    gated = _gated(keras)
    assert _fit(gated) == history
    _assert_same(_outcome(gated), outcome)


def test_the_seed_sets_the_gates_noise(keras):
    def masks(gated):
        drawn = []
        for _ in range(3):
            resample_masks(gated)
            drawn.append(np.concatenate([g.mask.numpy() for g in gates_of(gated)]))
        return np.stack(drawn)

    models = [dsa_tf.prune_to_budget(_small_net(keras), 0.5, seed=seed) for seed in (3, 4)]
    for gated in models:
        for gate in gates_of(gated):
            gate.mode.assign(STOCHASTIC)
        dsa_tf.set_keep_ratios(gated, {name: 0.5 for name in dsa_tf.keep_ratios(gated)})
    first = masks(models[0])
    for gate in gates_of(models[0]):
        gate.step.assign(0)
    np.testing.assert_array_equal(masks(models[0]), first)  # the same seed and steps
    assert not np.array_equal(masks(models[1]), first)


def _interrupted(keras, backup, epoch, batch):
    """A model and DSACallback whose fit was interrupted at (epoch, batch), and the phase
    then."""
    gated, dsa, interrupt = _gated(keras), _dsa(), Interrupt(epoch, batch)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(gated, [backup, interrupt], dsa=dsa)
    return gated, dsa, interrupt.phase


# Resumed into a new model and callback (as after a crash), or into the same ones (as when
# fit is called again in the same session).
@pytest.mark.parametrize("phase, epoch, batch, new_model", [
    (STOCHASTIC, 2, 2, True), (FROZEN, EPOCHS - 1, 7, False)])
def test_fit_resumed_from_an_epoch_backup_ends_as_an_uninterrupted_one(
        keras, reference, tmp_path, phase, epoch, batch, new_model):
    history, outcome = reference
    gated, dsa, interrupted_in = _interrupted(
        keras, keras.callbacks.BackupAndRestore(str(tmp_path)), epoch, batch)
    assert interrupted_in == phase
    if new_model:
        gated, dsa = _gated(keras), _dsa()
    resumed = _fit(gated, [keras.callbacks.BackupAndRestore(str(tmp_path))], dsa=dsa)
    # The interrupted epoch runs again from the state at its start.
    assert resumed == {name: values[epoch:] for name, values in history.items()}
    _assert_same(_outcome(gated), outcome)


@pytest.mark.parametrize("phase, epoch, batch", [(OPEN, 0, 5), (STOCHASTIC, 2, 2)])
def test_fit_resumed_from_a_mid_epoch_backup_meets_the_budget(
        keras, reference, tmp_path, phase, epoch, batch):
    # Backups every 3 batches. Keras 3 restarts the interrupted epoch at its first batch with
    # the state of the last backup; tf_keras goes on at the next batch number, reading the
    # epoch's data from its start. Either way the allocation goes on from the backed-up state.
    history, _ = reference
    gated, dsa, interrupted_in = _interrupted(
        keras, keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=3), epoch, batch)
    assert interrupted_in == phase
    resumed = _fit(gated, [keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=3)],
                   dsa=dsa)
    phases = resumed["dsa_phase"]
    assert len(phases) == EPOCHS - epoch and phases[0] >= phase
    assert phases == sorted(phases) and phases[-1] == FROZEN
    if phase == OPEN:  # the warm-up ends with epoch 0 either way (when the budget is met
        # depends on the batches the allocation saw, which tf_keras's resumption changes)
        assert phases[:2] == history["dsa_phase"][:2] == [OPEN, STOCHASTIC]
    ratio = dsa_tf.count_flops(dsa_tf.strip(gated)) / dsa_tf.count_flops(_small_net(keras))
    assert ratio <= BUDGET
    assert resumed["dsa_flops_hard"][-1] == pytest.approx(ratio, abs=1e-6)


def test_gated_model_saved_mid_allocation_loads_and_goes_on(keras, reference, tmp_path):
    history, outcome = reference
    gated = _gated(keras)
    first = _fit(gated, epochs=2)
    assert first["dsa_phase"][-1] == STOCHASTIC
    path = str(tmp_path / "mid.keras")
    gated.save(path)
    loaded = keras.models.load_model(path)  # ChannelGate is registered by importing dsa_tf
    state = [w.numpy() for g in gates_of(gated) for w in g.weights]
    loaded_state = [w.numpy() for g in gates_of(loaded) for w in g.weights]
    assert len(loaded_state) == len(state)
    assert all(np.array_equal(a, b) for a, b in zip(state, loaded_state))
    # A new fit with a new DSACallback goes on with the allocation (no second warm-up).
    resumed = _fit(loaded, epochs=EPOCHS - 2)
    assert resumed == {name: values[2:] for name, values in history.items()}
    _assert_same(_outcome(loaded), outcome)
