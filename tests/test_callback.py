"""DSACallback: the budget is reached inside model.fit, strip meets it, state survives."""

import io
import logging

import numpy as np
import pytest
import tensorflow as tf

import dsa_tf
from dsa_tf.allocation.budget import usage
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gates import FROZEN, STOCHASTIC
from dsa_tf.allocation.resources import ResourceModel


def _small_net(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(x)))
    y = layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(y))
    x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, strides=2)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4)(x), name="small_net")


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype("int64") + 2 * (x[:, 4:, 4:, 1].mean(
        axis=(1, 2)) > 0)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _fit(keras, budget, epochs, callbacks=(), gated=None, round_to=1, **callback_args):
    gated = gated or dsa_tf.prune_to_budget(_small_net(keras), budget, seed=1,
                                            round_to=round_to)
    gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    args = {"warmup_epochs": 1, "update_every": 1, "finish_by": None, "verbose": 0,
            **callback_args}
    callback = dsa_tf.DSACallback(_data(64, seed=1), **args)
    history = gated.fit(_data(), epochs=epochs, callbacks=[callback, *callbacks], verbose=0)
    return gated, history.history


# 8 batches per epoch and one ADMM iteration per batch: the documented bound of 150
# iterations is 19 epochs of allocation after 1 warm-up epoch.
EPOCHS = 20


@pytest.mark.parametrize("budget, options", [
    ({"flops": 0.5}, {}), ({"params": 0.5}, {}), ({"flops": 0.6, "params": 0.4}, {}),
    ({"flops": 0.5}, {"theta_batch_statistics": False, "keep_signal": "straight_through"}),
    ({"flops": 0.5}, {"keep_signal": "straight_through"}),
    ({"flops": 0.5}, {"keep_signal": "top_k_differences"}),
    ({"flops": 0.5}, {"weight_masks": "sampled"})])
def test_budget_is_reached_and_strip_meets_it(keras, budget, options):
    model = _small_net(keras)
    gated, history = _fit(keras, budget, EPOCHS, **options)
    assert history["dsa_phase"][0] == 0 and history["dsa_phase"][-1] == 2
    assert history["dsa_completed"][-1] == 0  # the allocation itself met the budget
    assert all(int(g.mode.numpy()) == FROZEN for g in gates_of(gated))
    small = dsa_tf.strip(gated)
    counts = {"flops": dsa_tf.count_flops, "params": dsa_tf.count_params}
    for name, fraction in budget.items():
        ratio = counts[name](small) / counts[name](model)
        assert ratio <= fraction
        assert history[f"dsa_{name}_hard"][-1] == pytest.approx(ratio, abs=1e-6)
    x = next(iter(_data()))[0]
    np.testing.assert_allclose(small(x), gated(x, training=False), rtol=1e-4, atol=1e-4)


def test_the_allocation_logs_no_warning_about_dense_gradients(keras):
    # The resource function once gathered the keep ratios into plan order, and TensorFlow
    # warned in every user's log that converting the gather's sparse gradient to a dense one
    # inside the ADMM's jacobians "may make it slow".
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        _fit(keras, {"flops": 0.5}, 3)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert "IndexedSlices" not in log.getvalue()


def test_top_k_weight_masks_train_the_network_the_allocation_would_end_with(keras):
    """With weight_masks="top_k" (the default) every weight step of the allocation runs under
    each group's hard mask at its current keep ratio (with "sampled", the paper's, the masks
    differ from it); the budget is still met by the allocation."""
    seen = []

    class Record(keras.callbacks.Callback):  # runs after DSACallback's hooks
        def on_train_batch_begin(self, batch, logs=None):
            gates = gates_of(self.model)
            if int(gates[0].mode.numpy()) == STOCHASTIC:
                seen.append(all(np.array_equal(g.mask.numpy(), g.top_k_mask().numpy())
                                for g in gates))

    with pytest.warns(UserWarning, match="budget not met yet"):
        _fit(keras, 0.5, 2, callbacks=[Record()], weight_masks="sampled")  # one epoch
    assert len(seen) == 8 and not all(seen)
    seen.clear()
    model = _small_net(keras)
    gated, history = _fit(keras, 0.5, EPOCHS, callbacks=[Record()])
    assert len(seen) > 8 and all(seen)
    assert history["dsa_phase"][-1] == 2 and history["dsa_completed"][-1] == 0
    assert dsa_tf.count_flops(dsa_tf.strip(gated)) / dsa_tf.count_flops(model) <= 0.5
    with pytest.raises(ValueError, match="weight_masks must be one of"):
        dsa_tf.DSACallback(_data(16), weight_masks="hard")


def test_keep_ratio_trace_records_every_iteration(keras):
    gated = dsa_tf.prune_to_budget(_small_net(keras), 0.5, seed=1)
    gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = dsa_tf.DSACallback(_data(64, seed=1), warmup_epochs=1, update_every=1,
                                  finish_by=None, verbose=0)
    with pytest.warns(UserWarning, match="budget not met yet"):
        gated.fit(_data(), epochs=3, callbacks=[callback], verbose=0)
    trace = callback.keep_ratio_trace
    assert [iteration for iteration, _ in trace] == list(range(1, 17))  # 2 epochs of 8 steps
    ratios = np.array([list(r.values()) for _, r in trace])
    assert np.all(np.diff(ratios, axis=0) <= 1e-6)  # keep ratios only decrease
    assert np.all(ratios[-1] < ratios[0])
    assert trace[-1][1] == pytest.approx(dsa_tf.keep_ratios(gated))


def test_round_to_gives_multiples_and_fills_the_budget(keras):
    model = _small_net(keras)
    gated, history = _fit(keras, 0.5, EPOCHS, round_to=8)
    assert history["dsa_phase"][-1] == 2
    small = dsa_tf.strip(gated)
    assert dsa_tf.count_flops(small) / dsa_tf.count_flops(model) <= 0.5
    widths = [g.channels for g in dsa_tf.analyze(small).groups if g.prunable]
    assert widths and all(w % 8 == 0 for w in widths), widths
    assert any(w < full for w, full in zip(widths, (16, 16, 32))), widths
    # rounding down to the steps leaves no budget unused: no group could keep 8 more
    plan = dsa_tf.analyze(gated)
    kept = {row["group"]: row["kept"] for row in dsa_tf.allocation_report(gated)}
    counts = np.array([kept[g.name] for g in plan.prunable])
    for k, group in enumerate(plan.prunable):
        if counts[k] < group.channels:
            more = counts.copy()
            more[k] += 8
            assert usage(ResourceModel(plan), more, ["flops"])["flops"] > 0.5, (group, counts)
    # the logits hold the frozen counts
    ratios = dsa_tf.keep_ratios(gated)
    assert [round(ratios[g.name] * g.channels) for g in plan.prunable] == counts.tolist()


def test_allocation_state_survives_a_checkpoint(keras, tmp_path):
    gated, history = _fit(keras, 0.5, 3)
    assert history["dsa_phase"][-1] == 1  # still allocating
    path = str(tmp_path / "mid.weights.h5")
    gated.save_weights(path)
    state = [w.numpy().copy() for g in gates_of(gated) for w in g.weights]
    fresh = dsa_tf.prune_to_budget(_small_net(keras), 0.5, seed=1)
    fresh.load_weights(path)
    restored = [w.numpy() for g in gates_of(fresh) for w in g.weights]
    assert len(state) == len(restored) == 3 * 14  # theta ... u1, frozen_by of 3 gates
    assert all(np.array_equal(a, b) for a, b in zip(state, restored))
    assert all(int(g.mode.numpy()) == STOCHASTIC for g in gates_of(fresh))
    _, resumed = _fit(keras, 0.5, EPOCHS - 3, gated=fresh)
    assert resumed["dsa_phase"][0] == 1 and resumed["dsa_phase"][-1] == 2


def test_allocation_report(keras):
    gated = dsa_tf.prune_to_budget(_small_net(keras), 0.5)
    rows = dsa_tf.allocation_report(gated)
    assert [r["channels"] for r in rows] == [16, 16, 32]
    assert all(r["kept"] == r["channels"] for r in rows)
    # A conv between two prunable groups counts half to each (hand count, 8x8 input):
    # A = stem conv + residual output group, B = the block's first conv, C = strided conv.
    stem, block = 2 * 9 * 3 * 16 * 64, 2 * 9 * 16 * 16 * 64
    strided, dense = 2 * 9 * 16 * 32 * 9, 2 * 32 * 4
    total = stem + 2 * block + strided + dense
    expected = [stem + block + strided / 2, block, strided / 2 + dense]
    assert [r["flops_share"] for r in rows] == pytest.approx([e / total for e in expected])
    # Parameters (kernels, biases, BatchNorm's four vectors): conv kernels between two groups
    # half to each, the Dense bias to no group.
    conv, wide = 9 * 16 * 16, 9 * 16 * 32
    expected = [27 * 16 + 16 + 64 + conv / 2 + conv / 2 + 16 + 64 + wide / 2,
                conv / 2 + 16 + 64 + conv / 2, wide / 2 + 32 + 128 + 32 * 4]
    total = dsa_tf.count_params(_small_net(keras))
    assert total == sum(expected) + 4
    assert [r["params_share"] for r in rows] == pytest.approx([e / total for e in expected])


def test_callback_refuses_a_model_without_gates_and_empty_alpha_data(keras):
    model = _small_net(keras)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="prune_to_budget"):
        model.fit(_data(), epochs=1, verbose=0, callbacks=[dsa_tf.DSACallback(_data())])
    gated = dsa_tf.prune_to_budget(model, 0.5)
    gated.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="no batch"):
        gated.fit(_data(), epochs=1, verbose=0, callbacks=[dsa_tf.DSACallback(_data().take(0))])


def test_a_keep_signal_that_does_not_exist_or_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="keep_signal must be one of"):
        dsa_tf.DSACallback(_data(16), keep_signal="gradient")
    with pytest.raises(ValueError, match="theta_batch_statistics=False"):
        dsa_tf.DSACallback(_data(16), keep_signal="differences", theta_batch_statistics=False)
    with pytest.raises(ValueError, match="theta_batch_statistics=False"):
        dsa_tf.DSACallback(_data(16), keep_signal="top_k_differences",
                           theta_batch_statistics=False)


def test_keep_floor_bounds_every_keep_ratio(keras):
    gated, history = _fit(keras, 0.3, EPOCHS, keep_floor=0.5)
    assert history["dsa_completed"][-1] == 0 and history["dsa_phase"][-1] == 2
    # the uniform ratio r of the small net at 30% of its FLOPs, by bisection on the counts
    model, low, high = _small_net(keras), 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        ratios = np.full(len(gates_of(gated)), mid)
        if dsa_tf.analyze(model).flops(ratios) <= 0.3 * dsa_tf.count_flops(model):
            low = mid
        else:
            high = mid
    assert min(dsa_tf.keep_ratios(gated).values()) >= 0.5 * low - 1e-6


def test_paper_hyperparameters_can_be_chosen(keras):
    gated, history = _fit(keras, 0.5, 3, rho1=0.01, rho2=0.01, loss_scale=1e5)
    assert history["dsa_phase"] == [0.0, 1.0, 1.0]
    assert history["dsa_flops_expected"][-1] < history["dsa_flops_expected"][0]
    assert int(gates_of(gated)[0].admm_step.numpy()) == 16  # 2 epochs x 8 steps
