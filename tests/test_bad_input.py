"""Bad input is refused with a clear error before anything changes; a non-finite loss stops
training without spoiling the gates."""

import json

import numpy as np
import pytest
import tensorflow as tf

import dsa_tf
from dsa_tf import _keras
from dsa_tf.allocation.gated_model import gates_of

from test_callback import _data, _small_net


def _snapshot(model):
    config = json.dumps(model.get_config(), sort_keys=True, default=str)
    return config, [w.numpy().copy() for w in model.weights]


def _assert_unchanged(model, snapshot):
    config, weights = _snapshot(model)
    assert config == snapshot[0]
    assert len(weights) == len(snapshot[1])
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(weights, snapshot[1]))


def _arrays(n, seed):
    x, y = next(iter(_data(n, seed).unbatch().batch(n)))
    return x.numpy(), y.numpy()


def _compiled(keras, model):
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("budget, message", [
    (float("inf"), "positive finite number, got inf"),
    (True, "positive finite number, got True"),
    ("0.5", "positive finite number, got '0.5'"),
    ({"params": -1}, "params budget must be a positive finite number, got -1"),
    ({"flops": 0.5, "energy": 0.5}, "Unknown resource 'energy'"),
    (1e9, r"exceeds the model's .*\(a budget above 1 is an absolute amount"),
    (2.0, r"budget 2\.0 \(0\.0000\) .*cannot be met: .* smallest reachable value is"),  # 2 FLOPs
])
def test_bad_budget_is_refused_and_the_model_untouched(keras, budget, message):
    model = _small_net(keras)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        dsa_tf.prune_to_budget(model, budget)
    _assert_unchanged(model, before)


def test_models_that_cannot_be_gated_are_refused_untouched(keras):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(keras.layers.GlobalAveragePooling2D()(self.conv(x)))

    subclassed = Subclassed()
    subclassed(np.zeros((1, 8, 8, 3), "float32"))
    weights = [w.numpy().copy() for w in subclassed.weights]
    with pytest.raises(ValueError, match="subclassed"):
        dsa_tf.prune_to_budget(subclassed, 0.5)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, subclassed.weights))

    inputs = keras.Input((4, 4, 3))
    no_groups = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    before = _snapshot(no_groups)
    with pytest.raises(ValueError, match="no prunable channel group"):
        dsa_tf.prune_to_budget(no_groups, 0.5)
    _assert_unchanged(no_groups, before)

    model = _small_net(keras)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="min_channels must be at least 1"):
        dsa_tf.prune_to_budget(model, 0.5, min_channels=0)
    _assert_unchanged(model, before)


def test_bad_keep_is_refused_and_the_model_untouched(keras):
    model = _small_net(keras)
    group = dsa_tf.analyze(model).prunable[0]
    before = _snapshot(model)
    for keep, message in [
        (None, "needs keep="),
        ({group.name: [0, group.channels]}, rf"outside \[0, {group.channels}\)"),
        ({group.name: [2, 2]}, "repeats"),
        ({"nope": [0]}, "No channel group 'nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            dsa_tf.strip(model, keep)
        _assert_unchanged(model, before)


def test_alpha_data_that_cannot_be_read_again_is_refused(keras):
    x, y = _arrays(32, 0)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    for data, message in [((b for b in batches), "generator is one-shot"),
                          (iter(_data()), "is one-shot: exhausted after one pass"),
                          (42, "int is not iterable")]:
        with pytest.raises(ValueError, match=rf"{message}.*tf\.data\.Dataset or a list"):
            dsa_tf.DSACallback(data)
    dsa_tf.DSACallback(batches)  # a list is read again and again


@pytest.mark.parametrize("make, message", [
    (lambda x, y: tf.data.Dataset.from_tensor_slices(x).batch(16),
     r"yield \(x, y\) or \(x, y, sample_weight\) batches; its first batch is an array of "
     r"shape \(16, 8, 8, 3\)"),
    (lambda x, y: [(x, y, np.ones(len(y)), y)], "its first batch is a tuple of 4"),
    (lambda x, y: [(np.resize(x, (len(x), 16, 16, 3)), y)],
     r"has shape \(16, 16, 16, 3\); the model expects \(None, 8, 8, 3\)"),
    (lambda x, y: [((x, x), y)], r"x is a tuple of 2 .*the model has 1 input"),
    (lambda x, y: [(x, np.eye(4)[y][:, :, None])],
     r"loss fails on alpha_data's first batch: y is an array of shape \(16, 4, 1\)"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(16).take(0),
     "yielded no batch"),
], ids=["features-only", "four-element-batches", "wrong-image-size", "two-inputs-for-one",
        "wrong-label-shape", "empty"])
def test_mismatched_alpha_data_is_refused_before_training(keras, make, message):
    gated = _compiled(keras, dsa_tf.prune_to_budget(_small_net(keras), 0.5))
    before = _snapshot(gated)
    callback = dsa_tf.DSACallback(make(*_arrays(16, 1)), warmup_epochs=0, verbose=0)
    with pytest.raises(ValueError, match=message):
        gated.fit(_data(), epochs=1, callbacks=[callback], verbose=0)
    _assert_unchanged(gated, before)


def test_callback_on_a_model_without_gates_is_refused_before_training(keras):
    model = _compiled(keras, _small_net(keras))
    before = _snapshot(model)
    with pytest.raises(ValueError, match="needs a model made by dsa_tf.prune_to_budget"):
        model.fit(_data(), epochs=1, verbose=0, callbacks=[dsa_tf.DSACallback(_data())])
    _assert_unchanged(model, before)


def _with_nan(n, seed, batch):
    """``_data(n, seed)`` with a NaN pixel in one batch (of 16)."""
    x, y = _arrays(n, seed)
    x[16 * batch, 0, 0, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


@pytest.mark.parametrize("warmup_epochs, phase, iterations", [
    (1, "warm-up", 0), (0, "allocation", 2)])
def test_non_finite_training_loss_stops_fit_and_spares_the_gates(
        keras, warmup_epochs, phase, iterations):
    gated = _compiled(keras, dsa_tf.prune_to_budget(_small_net(keras), 0.5))
    callback = dsa_tf.DSACallback(_data(48, seed=1), warmup_epochs=warmup_epochs,
                                  update_every=1, verbose=0)
    with pytest.raises(FloatingPointError,
                       match=rf"training loss is nan at epoch 1, batch 3, in the {phase} phase "
                             rf"\(after {iterations} ADMM iterations\)"):
        gated.fit(_with_nan(128, 0, batch=2), epochs=2, callbacks=[callback], verbose=0)
    for gate in gates_of(gated):
        assert all(np.all(np.isfinite(w.numpy())) for w in gate.weights)
        assert int(gate.admm_step.numpy()) == iterations  # the failing step made no update


class WeightsAfterEachStep(_keras.default_keras().callbacks.Callback):
    """Listed before DSACallback: the model's variables after each weight step, before the
    ADMM iteration of that step."""

    def on_train_batch_end(self, batch, logs=None):
        self.weights = [w.numpy().copy() for w in self.model.weights]


def test_non_finite_keep_ratio_update_is_not_applied(keras):
    gated = _compiled(keras, dsa_tf.prune_to_budget(_small_net(keras), 0.5))
    spy = WeightsAfterEachStep()
    callback = dsa_tf.DSACallback(_with_nan(48, 1, batch=1), warmup_epochs=0, update_every=1,
                                  verbose=0)
    with pytest.raises(FloatingPointError,
                       match=r"keep-ratio update .* not finite .* at epoch 1, batch 2, in the "
                             r"allocation phase \(after 1 ADMM iterations\)"):
        gated.fit(_data(), epochs=1, callbacks=[spy, callback], verbose=0)
    # Gates and BatchNorm statistics (the Theta step's forward pass saw the NaN) are as the
    # weight step left them.
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(spy.weights, gated.weights))
    assert all(np.all(np.isfinite(w)) for w in spy.weights)
