"""DSA on the user's schedule: defaults that reach the budget in fits of any length, no silent
budget miss, BatchNorm statistics that fit the final masks."""

import warnings

import numpy as np
import pytest

import dsa_tf
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gates import FROZEN, STOCHASTIC
from dsa_tf.allocation.schedule import ADMM_ITERATIONS, plan_schedule

from test_callback import _data, _small_net
from test_distribute import _report, _start


def test_the_paper_schedule_at_300_cifar_epochs():
    # CIFAR-10: 45,000 weight-training images at batch 128 are 352 steps per epoch.
    schedule = plan_schedule(300, 352)
    assert schedule.warmup_steps == 20 * 352  # 20 warm-up epochs
    assert (schedule.update_every, schedule.iterations_per_update) == (20, 1)


@pytest.mark.parametrize("epochs", [1, 3, 8, 30, 100, 300])
@pytest.mark.parametrize("steps", [1, 8, 50, 352, 5000])
def test_the_planned_allocation_fits_the_admm_by_a_third_of_the_fit(epochs, steps):
    """Between the warm-up's end and a third of the steps there is room for the iterations the
    ADMM needs at most, and the deadline for completing leaves at least 40% to fine-tune."""
    s = plan_schedule(epochs, steps)
    total = epochs * steps
    assert 1 <= s.update_every <= 20
    updates = max(1, (round(total / 3) - s.warmup_steps) // s.update_every)
    assert updates * s.iterations_per_update >= ADMM_ITERATIONS
    assert s.warmup_steps <= total / 15 + 1
    assert round(total / 3) <= s.finish_step <= max(s.warmup_steps + 1, 0.6 * total + 1)


def test_explicit_settings_override_the_plan():
    s = plan_schedule(10, 50, warmup_epochs=2, update_every=5, finish_by=None)
    assert (s.warmup_steps, s.update_every, s.iterations_per_update, s.finish_step) == (
        100, 5, 1, None)
    with pytest.raises(ValueError, match="finish_by"):
        plan_schedule(10, 50, finish_by=1.5)


@pytest.mark.parametrize("allocate_by", [0.05, 0.15, 0.5])
def test_an_allocation_planned_to_end_earlier_fits_the_admm_in_its_window(allocate_by):
    """A fine-tuning fit (no warm-up) that leaves more steps to fine-tune: the ADMM's
    iterations still fit between the first step and allocate_by of the fit."""
    total = 3 * 70
    s = plan_schedule(3, 70, warmup_epochs=0, allocate_by=allocate_by)
    window = max(1, round(total * allocate_by))
    assert window // s.update_every * s.iterations_per_update >= ADMM_ITERATIONS
    assert window // s.update_every * s.iterations_per_update < 2 * ADMM_ITERATIONS
    default = plan_schedule(3, 70, warmup_epochs=0)
    assert (s.iterations_per_update > default.iterations_per_update) == (allocate_by < 1 / 3)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="allocate_by must be in"):
            plan_schedule(3, 70, allocate_by=bad)
    with pytest.raises(ValueError, match="must not be after finish_by"):
        dsa_tf.DSACallback([(np.zeros((1, 4)), np.zeros(1))], allocate_by=0.7)


def _compiled(keras, budget, seed=1):
    gated = dsa_tf.prune_to_budget(_small_net(keras), budget, seed=seed)
    gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return gated


@pytest.mark.parametrize("epochs", [3, 8, 30])
@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_defaults_reach_the_budget_in_fits_of_any_length(keras, epochs, budget):
    """Only alpha_data given: the allocation itself meets the budget (no completion) early
    enough to leave most of the fit to fine-tuning, and strip meets it."""
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, budget)
    history = gated.fit(_data(), epochs=epochs, verbose=0,
                        callbacks=[dsa_tf.DSACallback(_data(64, seed=1), verbose=0)]).history
    assert history["dsa_phase"][-1] == 2
    assert history["dsa_completed"][-1] == 0
    frozen_at = history["dsa_phase"].index(2.0)  # the first epoch ending frozen (0-based)
    assert frozen_at + 1 <= max(1, round(0.4 * epochs)), history["dsa_phase"]
    status = dsa_tf.budget_status(gated)
    assert status["met"] and status["frozen_by"] == "allocation"
    ratio = dsa_tf.count_flops(dsa_tf.strip(gated)) / dsa_tf.count_flops(_small_net(keras))
    assert ratio <= budget


@pytest.mark.keras3_only  # tf_keras' distributed fits: test_distribute's multi-worker test
def test_defaults_reach_the_budget_on_two_replicas():
    """The 3-epoch fit at budget 0.3 under MirroredStrategy over two logical CPUs
    (tests/distributed_fit.py)."""
    runs = _report(_start("schedule"))["runs"]
    assert [(r["epochs"], r["budget"]) for r in runs] == [(3, 0.3)]
    for run in runs:
        assert run["phases"][-1] == 2 and run["completed"] == 0, run
        assert run["flops_stripped"] <= run["budget"], run


def test_a_pretrained_start_allocates_within_a_tenth_of_the_fit_by_default(keras):
    """Without warm-up (a pre-trained network) the defaults plan the allocation to end by a
    tenth of the fit, the paper's settings by a third; each meets the budget by then."""
    modes = []

    class Record(keras.callbacks.Callback):  # runs after DSACallback's hooks
        def on_train_batch_end(self, batch, logs=None):
            modes.append(int(gates_of(self.model)[0].mode.numpy()))

    for make, share in ((dsa_tf.DSACallback, 0.1), (dsa_tf.DSACallback.paper, 1 / 3)):
        modes.clear()
        callback = make(_data(64, seed=1), warmup_epochs=0, verbose=0)
        assert callback.allocate_by == pytest.approx(share)
        _compiled(keras, 0.5).fit(_data(), epochs=5, verbose=0, callbacks=[callback, Record()])
        assert len(modes) == 40 and modes[-1] == FROZEN
        assert modes.index(FROZEN) + 1 <= round(40 * share), modes


def test_paper_settings_are_one_call_away():
    callback = dsa_tf.DSACallback.paper([(np.zeros((1, 4)), np.zeros(1))], beta2_init=0.1)
    assert (callback.keep_signal, callback.beta2_relative, callback.weight_masks,
            callback.beta2_init, callback.allocate_by) == (
        "straight_through", False, "sampled", 0.1, pytest.approx(1 / 3))
    default = dsa_tf.DSACallback([(np.zeros((1, 4)), np.zeros(1))])
    assert (default.keep_signal, default.beta2_relative, default.weight_masks,
            default.beta2_init) == ("differences", False, "top_k", 0.05)


def test_an_allocation_planned_to_end_within_the_warm_up_warns(keras):
    """allocate_by at or before the end of the warm-up leaves the ADMM no window: all its
    iterations run at one step. The user is told; with warmup_epochs=0 nothing is said."""
    gated = _compiled(keras, 0.5)
    callback = dsa_tf.DSACallback(_data(64, seed=1), allocate_by=0.05, verbose=0)
    with pytest.warns(UserWarning, match="lasts until or past the planned end"):
        gated.fit(_data(), epochs=3, verbose=0, callbacks=[callback])  # warm-up: 2 of 24
    gated = _compiled(keras, 0.5)
    callback = dsa_tf.DSACallback(_data(64, seed=1), allocate_by=0.05, warmup_epochs=0,
                                  verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*shuffle=True")
        gated.fit(_data(), epochs=3, verbose=0, callbacks=[callback])


def test_a_schedule_that_cannot_reach_the_budget_is_completed_and_says_so(keras):
    gated = _compiled(keras, 0.4)
    callback = dsa_tf.DSACallback(_data(64, seed=1), update_every=50, verbose=0)
    with pytest.warns(UserWarning, match="had not met the budget .* give fit more epochs"):
        history = gated.fit(_data(), epochs=3, verbose=0, callbacks=[callback]).history
    # 24 steps, 2 of warm-up, no ADMM iteration: completed at 60% of the steps (step 14).
    assert history["dsa_phase"] == [1.0, 2.0, 2.0]
    assert history["dsa_completed"] == [0.0, 1.0, 1.0]
    assert history["dsa_flops_hard"][-1] <= 0.4
    status = dsa_tf.budget_status(gated)
    assert status["met"] and status["frozen_by"] == "completion"
    assert status["admm_iterations"] == 0
    # The groups were lowered together: the learned order (all equal here) is kept.
    ratios = list(dsa_tf.keep_ratios(gated).values())
    assert max(ratios) - min(ratios) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strip has nothing to warn about
        small = dsa_tf.strip(gated)
    assert dsa_tf.count_flops(small) / dsa_tf.count_flops(_small_net(keras)) <= 0.4


def test_without_a_deadline_the_miss_is_told_and_strip_warns(keras):
    gated = _compiled(keras, 0.4)
    callback = dsa_tf.DSACallback(_data(64, seed=1), update_every=50, finish_by=None,
                                  verbose=0)
    with pytest.warns(UserWarning, match="fit ended in the allocation phase"):
        gated.fit(_data(), epochs=2, verbose=0, callbacks=[callback])
    assert int(gates_of(gated)[0].mode.numpy()) == STOCHASTIC
    assert not dsa_tf.budget_status(gated)["met"]
    with pytest.warns(UserWarning, match="over its budget"):
        dsa_tf.strip(gated)


def _both_modes(model, batch):
    """The model's outputs on ``batch`` in inference and in training mode (BatchNorm
    statistics restored after the training-mode call)."""
    saved = [v.numpy() for v in model.non_trainable_variables]
    inference = np.asarray(model(batch, training=False))
    training = np.asarray(model(batch, training=True))
    for variable, value in zip(model.non_trainable_variables, saved):
        variable.assign(value)
    return inference, training


def _disagreement(model, batch):
    """How far inference mode is from training mode on ``batch``, relative to the output
    scale (:func:`_both_modes`)."""
    inference, training = _both_modes(model, batch)
    return np.abs(inference - training).max() / np.abs(training).max()


def _frozen(model):
    return int(gates_of(model)[0].mode.numpy()) == FROZEN


def _at_freeze(keras, batch):
    """A callback (listed after DSACallback) that, at the step the masks freeze, records
    :func:`_both_modes` on ``batch``."""

    class AtFreeze(keras.callbacks.Callback):
        outputs = None

        def on_train_batch_end(self, step, logs=None):
            if self.outputs is None and _frozen(self.model):
                self.outputs = _both_modes(self.model, batch)

    return AtFreeze()


def test_inference_matches_training_mode_when_the_masks_freeze(keras):
    """BatchNorm statistics re-estimated under the frozen masks: on the alpha batch they were
    estimated on (one batch of 64), inference computes what training mode computes."""
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)
    alpha = _data(64, seed=1).unbatch().batch(64)
    x = next(iter(alpha))[0]
    spy = _at_freeze(keras, x)
    gated.fit(_data(), epochs=3, verbose=0,
              callbacks=[dsa_tf.DSACallback(alpha, verbose=0), spy])
    inference, training = spy.outputs
    scale = np.abs(training).max()
    assert np.abs(inference - training).max() <= 1e-3 * scale
    # Without the re-estimation the two disagree (the statistics lag the masks).
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)
    spy = _at_freeze(keras, x)
    gated.fit(_data(), epochs=3, verbose=0,
              callbacks=[dsa_tf.DSACallback(alpha, bn_batches=0, verbose=0), spy])
    inference, training = spy.outputs
    assert np.abs(inference - training).max() > 1e-2 * np.abs(training).max()


class _Spy:
    """Callbacks that measure :func:`_disagreement` on ``batch``: at the last weight step of
    every epoch (``last_step``) and at every epoch's end (``epoch_end``), by epoch, while the
    gates are frozen (``frozen``: the epochs that ended frozen)."""

    def __init__(self, keras, batch, steps_per_epoch=8):
        spy = self

        class Spy(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, step, logs=None):
                if step + 1 == steps_per_epoch and _frozen(self.model):
                    spy.last_step[self.epoch] = _disagreement(self.model, batch)

            def on_epoch_end(self, epoch, logs=None):
                if _frozen(self.model):
                    spy.epoch_end[epoch] = _disagreement(self.model, batch)

        self.last_step, self.epoch_end = {}, {}
        self.callback = Spy()


def _fits_its_validation_metrics(gated, history, validation):
    """The last epoch's validation loss is the loss of the model fit returned."""
    return np.isclose(history["val_loss"][-1], gated.evaluate(validation, verbose=0),
                      rtol=1e-5)


def test_inference_matches_training_mode_at_every_fine_tuning_epochs_end(keras):
    """The fine-tuning after the freeze moves the weights away from the statistics estimated
    at the freeze (a callback listed before DSACallback sees inference and training mode
    disagree after each epoch's last weight step); DSACallback then re-estimates them for the
    weights as they are: at every epoch's end (where ModelCheckpoint writes, listed after it)
    inference computes what training mode computes on the alpha batch they come from, and
    the last epoch's validation loss is the final model's."""
    alpha = _data(64, seed=1).unbatch().batch(64)
    x = next(iter(alpha))[0]
    validation = _data(64, seed=2)
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)
    before, after = _Spy(keras, x), _Spy(keras, x)
    history = gated.fit(_data(), epochs=4, verbose=0, validation_data=validation,
                        callbacks=[before.callback, dsa_tf.DSACallback(alpha, verbose=0),
                                   after.callback]).history
    assert _frozen(gated) and len(after.epoch_end) >= 2, history["dsa_phase"]
    assert min(before.last_step.values()) > 0.1
    assert max(after.epoch_end.values()) <= 2e-3
    assert _disagreement(gated, x) <= 2e-3
    assert _fits_its_validation_metrics(gated, history, validation)


def test_one_shot_pruning_with_bn_data_keeps_inference_consistent_with_training(keras):
    """OneShotCallback given bn_data re-estimates the BatchNorm statistics under the pruned
    network right after pruning and for the weights every fine-tuning epoch ends with; a
    callback listed before it sees inference and training mode disagree at both points."""
    alpha = _data(64, seed=1).unbatch().batch(64)
    x = next(iter(alpha))[0]
    validation = _data(64, seed=2)

    class Pruned(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.value = _disagreement(self.model, x)

    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)
    keras.utils.set_random_seed(0)
    gated.fit(_data(), epochs=4, verbose=0)  # trained, unpruned
    pruned_before, pruned_after = Pruned(), Pruned()
    before, after = _Spy(keras, x), _Spy(keras, x)
    prune = dsa_tf.OneShotCallback(lambda m: dsa_tf.uniform_allocation(m, 0.4),
                                   warmup_epochs=0, bn_data=alpha, verbose=0)
    history = gated.fit(_data(), epochs=4, verbose=0, validation_data=validation,
                        callbacks=[pruned_before, before.callback, prune, pruned_after,
                                   after.callback]).history
    assert pruned_before.value > 0.1 and min(before.last_step.values()) > 0.1
    assert pruned_after.value <= 2e-3 and max(after.epoch_end.values()) <= 2e-3
    assert len(after.epoch_end) == 4
    assert _fits_its_validation_metrics(gated, history, validation)
    with pytest.raises(ValueError, match="bn_batches"):
        dsa_tf.OneShotCallback(lambda m: {}, bn_data=alpha, bn_batches=-1)


def test_one_shot_pruning_re_estimates_at_epoch_ends_of_unknown_length(keras):
    """Steps per epoch unknown to Keras (a filtered dataset): OneShotCallback prunes when the
    second epoch begins and re-estimates when each later epoch ends."""
    alpha = _data(64, seed=1).unbatch().batch(64)
    x = next(iter(alpha))[0]
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)
    after = _Spy(keras, x)
    prune = dsa_tf.OneShotCallback(lambda m: dsa_tf.uniform_allocation(m, 0.4),
                                   bn_data=alpha, verbose=0)
    unknown = _data().filter(lambda *_: True)
    gated.fit(unknown, epochs=3, verbose=0, callbacks=[prune, after.callback])
    assert prune.pruned_at == (1, 0) and sorted(after.epoch_end) == [1, 2]
    assert max(after.epoch_end.values()) <= 2e-3


def test_the_theta_steps_leave_batchnorm_statistics_alone(keras):
    keras.utils.set_random_seed(0)
    gated = _compiled(keras, 0.4)

    class Statistics(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append([v.numpy().copy() for v in self.model.non_trainable_variables
                                if "moving" in v.name])

    before, after = Statistics(), Statistics()
    callback = dsa_tf.DSACallback(_data(64, seed=1), warmup_epochs=0, update_every=1,
                                  finish_by=None, verbose=0)
    gated.fit(_data(), epochs=1, verbose=0, callbacks=[before, callback, after])
    assert int(gates_of(gated)[0].admm_step.numpy()) == 8  # an ADMM iteration per step
    assert len(before.values) == len(after.values) == 8
    for seen, then in zip(before.values, after.values):
        assert all(np.array_equal(a, b) for a, b in zip(seen, then))


def test_reestimate_batchnorm_averages_batch_statistics(keras):
    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=k, scale=1 + k, size=(256, 4)).astype("float32")
               for k in range(3)]
    assert dsa_tf.reestimate_batchnorm(model, batches, batches=2) == 2
    expected_mean = np.mean([b.mean(axis=0) for b in batches[:2]], axis=0)
    expected_var = np.mean([b.var(axis=0) for b in batches[:2]], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), expected_var, rtol=1e-2)
    assert bn.momentum == 0.99  # restored
    with pytest.raises(ValueError, match="no batch"):
        dsa_tf.reestimate_batchnorm(model, [])


def test_a_keep_ratio_of_one_keeps_every_channel(keras):
    gated = dsa_tf.prune_to_budget(_small_net(keras), 0.5)
    names = list(dsa_tf.keep_ratios(gated))
    dsa_tf.set_keep_ratios(gated, {names[0]: 1.0, names[1]: 0.5})
    kept = {row["group"]: row["kept"] for row in dsa_tf.allocation_report(gated)}
    assert kept[names[0]] == 16 and kept[names[1]] == 8
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            dsa_tf.set_keep_ratios(gated, {names[0]: bad})
