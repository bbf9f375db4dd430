"""Baseline allocators (uniform, magnitude, Taylor) and apply_allocation: budgets met exactly,
rounding respected, the expected channels kept, and bad input refused."""

import numpy as np
import pytest
import tensorflow as tf

import dsa_tf
from dsa_tf import _keras
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gates import FROZEN, is_gate
from dsa_tf.allocation.keep_process import kept_count
from dsa_tf.allocation.one_shot import baseline_allocator
from dsa_tf.allocation.schedule import plan_schedule

from masking import randomize
from small_models import multi_io, nested_backbone, sequential, unet

# Group -> the BatchNorms carrying it, by construction of _net.
BATCH_NORMS = {"stem": ["stem_bn", "block2_bn"], "block1": ["block1_bn"], "side": ["side_bn"],
               "down": ["down_bn"]}


def _net(keras):
    """A residual block and a concatenation: groups stem (12 channels, two BatchNorms), block1
    (12), side (8, concatenated with stem) and down (16)."""
    layers = keras.layers

    def conv_bn(x, filters, name, kernel=3, strides=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(x)
        return layers.BatchNormalization(name=f"{name}_bn")(x)

    inputs = keras.Input((8, 8, 3))
    x = layers.ReLU()(conv_bn(inputs, 12, "stem"))
    y = layers.ReLU()(conv_bn(x, 12, "block1"))
    x = layers.ReLU()(layers.Add()([x, conv_bn(y, 12, "block2")]))
    x = layers.Concatenate()([x, layers.ReLU()(conv_bn(x, 8, "side", kernel=1))])
    x = layers.ReLU()(conv_bn(x, 16, "down", strides=2))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4)(x), name="net")


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 4, n))).batch(16)


def _allocate(keras, name, model, budget, **kwargs):
    if name == "taylor":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return dsa_tf.taylor_allocation(model, budget, _data(), loss=loss, batches=2, **kwargs)
    return getattr(dsa_tf, f"{name}_allocation")(model, budget, **kwargs)


ALLOCATORS = ["uniform", "magnitude", "taylor"]
COUNTS = {"flops": dsa_tf.count_flops, "params": dsa_tf.count_params}


def _check_format(plan, keep):
    assert sorted(keep) == sorted(g.name for g in plan.prunable)
    for group in plan.prunable:
        kept = keep[group.name]
        assert isinstance(kept, np.ndarray) and kept.dtype.kind == "i"
        assert len(kept) >= 1 and np.all(np.diff(kept) > 0)
        assert kept[0] >= 0 and kept[-1] < group.channels


def _used(model, keep):
    """Each resource of strip(model, keep) as a fraction of the model's, counted."""
    small = dsa_tf.strip(model, keep)
    return {name: count(small) / count(model) for name, count in COUNTS.items()}


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_budgets_are_met_exactly(keras, allocator):
    model = _net(keras)
    randomize(model, np.random.default_rng(0))
    plan = dsa_tf.analyze(model)
    params = int(0.45 * dsa_tf.count_params(model))  # an absolute count
    for budget, resource, fractions in [
            (0.5, "flops", {"flops": 0.5}),
            (params, "params", {"params": params / dsa_tf.count_params(model)}),
            ({"flops": 0.7, "params": 0.4}, "flops", {"flops": 0.7, "params": 0.4})]:
        keep = _allocate(keras, allocator, model, budget, resource=resource)
        _check_format(plan, keep)
        used = _used(model, keep)
        assert all(used[name] <= fraction for name, fraction in fractions.items()), used
        # Not far below either: some constraint is within a few channels' worth of its limit.
        assert any(used[name] > fraction - 0.1 for name, fraction in fractions.items()), used
        ratios = plan.keep_ratios(keep)
        assert round(plan.flops(ratios)) == round(used["flops"] * COUNTS["flops"](model))


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_round_to_and_min_channels(keras, allocator):
    model = _net(keras)
    randomize(model, np.random.default_rng(1))
    plan = dsa_tf.analyze(model)
    keep = _allocate(keras, allocator, model, 0.6, round_to=4, min_channels=5)
    _check_format(plan, keep)
    for group in plan.prunable:
        count = len(keep[group.name])
        assert count % 4 == 0 or count == group.channels, (group.name, count)
        assert count >= 8, (group.name, count)  # 5 rounded up to a multiple of 4
    assert _used(model, keep)["flops"] <= 0.6
    assert any(len(keep[g.name]) < g.channels for g in plan.prunable)


def test_uniform_keeps_nearly_equal_ratios(keras):
    model = _net(keras)
    plan = dsa_tf.analyze(model)
    for budget in (0.3, 0.6):
        keep = dsa_tf.uniform_allocation(model, budget)
        ratios = plan.keep_ratios(keep)
        # k = round(a C) for one a, or one channel more where the budget allows: every ratio
        # is within one and a half channels below and half a channel above a.
        low = max(r - 1.5 / g.channels for r, g in zip(ratios, plan.prunable))
        high = min(r + 0.5 / g.channels for r, g in zip(ratios, plan.prunable))
        assert low <= high, ratios


@pytest.mark.parametrize("budget", [0.3, 0.45, 0.6])
def test_uniform_fills_what_rounding_down_leaves(keras, budget):
    """Counts at the largest common ratio rounded down to steps of 4 leave budget unused;
    uniform_allocation gives groups one step more each (at most) until no other fits."""
    model = _net(keras)
    plan = dsa_tf.analyze(model)
    channels = np.array([g.channels for g in plan.prunable])

    def flops(counts):
        return _used(model, {g.name: np.arange(c) for g, c in zip(plan.prunable, counts)})["flops"]

    def rounded(ratio):
        return np.asarray(kept_count(ratio, channels, 1, 4))

    low, high = 0.0, 1.0  # the largest common ratio whose rounded counts meet the budget
    for _ in range(20):
        low, high = ((low + high) / 2, high) if flops(rounded((low + high) / 2)) <= budget \
            else (low, (low + high) / 2)
    base = rounded(low)
    keep = dsa_tf.uniform_allocation(model, budget, round_to=4)
    counts = np.array([len(keep[g.name]) for g in plan.prunable])
    assert flops(counts) <= budget
    assert np.all((counts == base) | (counts == np.minimum(base + 4, channels))), (base, counts)
    for k in np.flatnonzero((counts == base) & (counts < channels)):
        assert flops(np.where(np.arange(len(counts)) == k, counts + 4, counts)) > budget, k


def test_magnitude_spreads_tied_importances_evenly(keras):
    """A fresh model's gammas are all 1: every channel ties, and removal alternates between
    groups instead of emptying the first ones."""
    model = _net(keras)
    plan = dsa_tf.analyze(model)
    ratios = plan.keep_ratios(dsa_tf.magnitude_allocation(model, 0.5))
    spread = max(1 / g.channels for g in plan.prunable)
    assert ratios.max() - ratios.min() <= spread, ratios


def _set_gammas(model, rng):
    """Distinct |gamma| of random sign in every BatchNorm; returns each group's sum of
    |gamma| over its BatchNorms (the importance the allocators should rank by)."""
    importance = {}
    for group, names in BATCH_NORMS.items():
        total = 0
        for name in names:
            layer = model.get_layer(name)
            gamma = rng.uniform(0.1, 2.0, layer.gamma.shape[0])  # sums without ties
            layer.gamma.assign((gamma * rng.choice([-1, 1], gamma.shape)).astype("float32"))
            total = total + gamma
        importance[group] = total
    return importance


@pytest.mark.parametrize("allocator", ["uniform", "magnitude"])
def test_the_largest_gammas_are_kept(keras, allocator):
    model = _net(keras)
    importance = _set_gammas(model, np.random.default_rng(2))
    keep = _allocate(keras, allocator, model, 0.5)
    for group, values in importance.items():
        expected = np.sort(np.argsort(-values)[:len(keep[group])])
        np.testing.assert_array_equal(keep[group], expected, err_msg=group)
    assert any(len(keep[g]) < len(v) for g, v in importance.items())


def test_magnitude_prunes_the_globally_smallest_normalised_gammas_first(keras):
    """block1's even channels have |gamma| 1, its odd ones 1e-4; every other group has equal
    gammas. Normalised by the group mean, block1's odd channels score about 2e-4 and all
    others 1 or 2: with the budget of block1 without its odd channels, exactly those go."""
    model = _net(keras)
    for group, names in BATCH_NORMS.items():
        for name in names:
            gamma = np.ones(model.get_layer(name).gamma.shape[0], "float32")
            if group == "block1":
                gamma[1::2] = 1e-4
            model.get_layer(name).gamma.assign(gamma)
    target = {"block1": np.arange(0, 12, 2)}
    flops = dsa_tf.count_flops(dsa_tf.strip(model, target))
    keep = dsa_tf.magnitude_allocation(model, flops)
    np.testing.assert_array_equal(keep["block1"], target["block1"])
    for group in ("stem", "side", "down"):
        assert len(keep[group]) == dsa_tf.analyze(model).group(group).channels
    assert dsa_tf.count_flops(dsa_tf.strip(model, keep)) == flops


def test_taylor_keeps_the_channels_the_loss_depends_on(keras):
    """Eight identical channels (same filters, so equal magnitudes) read by a Dense layer
    with weight 5 on channel 3, 2 on channel 6 and about 0.01 elsewhere: the loss depends
    on channels 3 and 6, which Taylor keeps where magnitude sees only ties."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 1, kernel_initializer="ones", bias_initializer="ones", name="c")(inputs)
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
    dense = layers.Dense(1, name="head")
    model = keras.Model(inputs, dense(x))
    weights = np.linspace(0.01, 0.02, 8)
    weights[3], weights[6] = 5.0, 2.0
    dense.kernel.assign(weights[:, None].astype("float32"))
    x = np.abs(np.random.default_rng(0).normal(size=(16, 8, 8, 3))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros((16, 1), "float32"))).batch(8)
    model.compile(loss="mse")
    keep = dsa_tf.taylor_allocation(model, 0.25, data)  # 2 of 8 channels: (384 k + 2 k) FLOPs
    np.testing.assert_array_equal(keep["c"], [3, 6])
    np.testing.assert_array_equal(dsa_tf.magnitude_allocation(model, 0.25)["c"], [0, 1])


def test_other_model_kinds(keras):
    for build in (unet, sequential, multi_io, nested_backbone):
        model = build(keras)
        for allocator in ("uniform", "magnitude"):
            keep = _allocate(keras, allocator, model, 0.5)
            _check_format(dsa_tf.analyze(model), keep)
            assert _used(model, keep)["flops"] <= 0.5, (model.name, allocator)


def _inputs(model):
    shape = _keras.shape_of(_keras.model_inputs(model)[0])
    return np.random.default_rng(5).normal(size=(4,) + shape[1:]).astype("float32")


def test_apply_allocation_freezes_the_gates_and_strips_like_the_plain_model(keras):
    model = _net(keras)
    randomize(model, np.random.default_rng(3))
    keep = dsa_tf.magnitude_allocation(model, 0.5)
    del keep["side"]  # an unlisted group keeps all its channels, as in strip
    gated = dsa_tf.prune_to_budget(model, 0.5)
    assert dsa_tf.apply_allocation(gated, keep) is None
    assert all(int(gate.mode.numpy()) == FROZEN for gate in gates_of(gated))
    plan = dsa_tf.analyze(model)
    for group in plan.prunable:
        expected = len(keep.get(group.name, range(group.channels))) / group.channels
        assert dsa_tf.keep_ratios(gated)[group.name] == pytest.approx(expected, abs=1e-5)
    x = _inputs(model)
    from_gated, from_model = dsa_tf.strip(gated), dsa_tf.strip(model, keep)
    assert [w.shape for w in from_gated.weights] == [w.shape for w in from_model.weights]
    for a, b in zip(from_gated.weights, from_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(from_gated(x), from_model(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gated(x, training=False), from_model(x), rtol=1e-4, atol=1e-4)
    # Fine-tuning with DSACallback keeps the allocation: the gates stay frozen.
    gated.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = gated.fit(_data(), epochs=1, verbose=0,
                        callbacks=[dsa_tf.DSACallback(_data(16), warmup_epochs=0, verbose=0)])
    assert history.history["dsa_phase"] == [2.0]
    assert history.history["dsa_flops_hard"][0] == pytest.approx(_used(model, keep)["flops"],
                                                                 abs=1e-5)
    tuned = dsa_tf.strip(gated)
    assert [w.shape for w in tuned.weights] == [w.shape for w in from_model.weights]


def test_apply_allocation_to_a_nested_model(keras):
    """The gated copy of a nested model is flat (its groups renamed); the keep dict of the
    original still applies."""
    model = nested_backbone(keras)
    randomize(model, np.random.default_rng(4))
    keep = dsa_tf.uniform_allocation(model, 0.5)
    assert "backbone/stem" in keep
    gated = dsa_tf.prune_to_budget(model, 0.5)
    dsa_tf.apply_allocation(gated, keep)
    x = _inputs(model)
    np.testing.assert_allclose(dsa_tf.strip(gated)(x), dsa_tf.strip(model, keep)(x),
                               rtol=1e-5, atol=1e-5)


def test_apply_allocation_refuses_bad_keep_and_changes_nothing(keras):
    model = _net(keras)
    with pytest.raises(ValueError, match="no ChannelGate.*dsa_tf.strip\\(model, keep\\)"):
        dsa_tf.apply_allocation(model, {"stem": range(4)})
    gated = dsa_tf.prune_to_budget(model, 0.5, round_to=4)
    before = [v.numpy().copy() for gate in gates_of(gated) for v in gate.weights]
    for keep, message in [
        ({"nope": range(4)}, r"No gated group 'nope'; gated groups are \['block1', 'down'"),
        ({"stem": [0, 12]}, r"outside \[0, 12\)"),
        ({"stem": [1, 1]}, "repeats"),
        ({"stem": []}, "empty"),
        ({"stem": range(4), "block1": range(5)}, r"keep\['block1'\] keeps 5 of 12 .*round_to=4"),
    ]:
        with pytest.raises(ValueError, match=message):
            dsa_tf.apply_allocation(gated, keep)
    after = [v.numpy() for gate in gates_of(gated) for v in gate.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_allocators_refuse_bad_budgets(keras, allocator):
    model = _net(keras)
    for budget, kwargs, message in [
        (0.0, {}, "positive finite"),
        ("0.5", {}, "positive finite"),
        ({}, {}, "empty"),
        (0.5, {"resource": "energy"}, "Unknown resource 'energy'"),
        (1e12, {}, "exceeds the model's"),
        (0.001, {}, "smallest reachable value"),
        (0.5, {"round_to": 0}, "round_to must be a positive integer"),
        (0.5, {"min_channels": 0}, "min_channels must be at least 1"),
        (0.5, {"exclude": ["nope"]}, "unknown layers"),
    ]:
        with pytest.raises(ValueError, match=message):
            _allocate(keras, allocator, model, budget, **kwargs)
    inputs = keras.Input((4, 4, 3))
    no_groups = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="no prunable channel group"):
        _allocate(keras, allocator, no_groups, 0.5)


def test_taylor_refuses_missing_data_or_loss(keras):
    model = _net(keras)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="needs a loss"):
        dsa_tf.taylor_allocation(model, 0.5, _data())
    with pytest.raises(ValueError, match="needs data"):
        dsa_tf.taylor_allocation(model, 0.5, None, loss=loss)
    with pytest.raises(ValueError, match="no batch"):
        dsa_tf.taylor_allocation(model, 0.5, _data().take(0), loss=loss)
    with pytest.raises(ValueError, match=r"\(x, y\) batches"):
        dsa_tf.taylor_allocation(model, 0.5, _data().map(lambda x, y: x), loss=loss)
    with pytest.raises(ValueError, match="batches must be a positive integer"):
        dsa_tf.taylor_allocation(model, 0.5, _data(), loss=loss, batches=0)


def _compiled(keras, gated):
    gated.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return gated


def test_one_shot_callback_prunes_where_dsa_would_allocate(keras):
    """Inside fit, at DSA's planned warm-up step, with the network trained so far."""
    model = _net(keras)
    gated = _compiled(keras, dsa_tf.prune_to_budget(model, 0.5))
    probe = next(iter(_data()))[0]
    seen = {}

    def allocate(plain):
        seen["gates"] = [layer for layer in plain.layers if is_gate(layer)]
        seen["difference"] = float(np.max(np.abs(np.asarray(plain(probe))
                                                 - np.asarray(gated(probe, training=False)))))
        seen["modes"] = {int(gate.mode.numpy()) for gate in gates_of(gated)}
        return dsa_tf.magnitude_allocation(plain, 0.5)

    callback = dsa_tf.OneShotCallback(allocate, verbose=0)
    epochs, steps = 5, 2  # 32 examples in batches of 16
    gated.fit(_data(), epochs=epochs, verbose=0, callbacks=[callback])
    warmup = plan_schedule(epochs, steps).warmup_steps
    assert warmup > 0 and callback.pruned_at == divmod(warmup, steps)
    assert seen["gates"] == [] and seen["modes"] == {0} and seen["difference"] < 1e-5
    assert {int(g.mode.numpy()) for g in gates_of(gated)} == {FROZEN}
    assert dsa_tf.budget_status(gated)["frozen_by"] == "assignment"
    assert dsa_tf.count_flops(dsa_tf.strip(gated)) <= 0.5 * dsa_tf.count_flops(model)


def test_one_shot_callback_before_the_first_step_and_when_resumed(keras):
    model = _net(keras)
    gated = _compiled(keras, dsa_tf.prune_to_budget(model, 0.4, resource="params"))
    first = []
    callback = dsa_tf.OneShotCallback(
        lambda plain: first.append(1) or dsa_tf.uniform_allocation(plain, 0.4, resource="params"),
        warmup_epochs=0, verbose=0)
    gated.fit(_data(), epochs=1, verbose=0, callbacks=[callback])
    assert callback.pruned_at == (0, 0) and first == [1]
    masks = [gate.mask.numpy().copy() for gate in gates_of(gated)]
    # A second fit, and a new callback on the frozen gates (a resumed run): nothing re-pruned.
    again = dsa_tf.OneShotCallback(lambda plain: pytest.fail("pruned twice"), verbose=0)
    gated.fit(_data(), epochs=2, verbose=0, callbacks=[callback, again])
    assert first == [1] and again.pruned_at is not None
    for gate, mask in zip(gates_of(gated), masks):
        np.testing.assert_array_equal(gate.mask.numpy(), mask)
    assert dsa_tf.count_params(dsa_tf.strip(gated)) <= 0.4 * dsa_tf.count_params(model)


def test_one_shot_callback_refuses_bad_input(keras):
    with pytest.raises(ValueError, match="callable"):
        dsa_tf.OneShotCallback({"stem": range(4)})
    with pytest.raises(ValueError, match="warmup_epochs"):
        dsa_tf.OneShotCallback(lambda m: {}, warmup_epochs=-1)
    plain = _compiled(keras, _net(keras))
    with pytest.raises(ValueError, match="no ChannelGate"):
        plain.fit(_data(), epochs=1, verbose=0,
                  callbacks=[dsa_tf.OneShotCallback(lambda m: {}, verbose=0)])
    gated = _compiled(keras, dsa_tf.prune_to_budget(_net(keras), 0.5))
    for gate in gates_of(gated):
        gate.mode.assign(1)  # DSA's allocation under way
    with pytest.raises(ValueError, match="DSA's allocation is running"):
        gated.fit(_data(), epochs=1, verbose=0,
                  callbacks=[dsa_tf.OneShotCallback(lambda m: {}, verbose=0)])


def test_baseline_allocator_by_name(keras):
    model = _net(keras)
    for name in ALLOCATORS:
        extra = {"data": _data(), "batches": 2,
                 "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
        allocate = baseline_allocator(
            name, 0.5, resource="params", **(extra if name == "taylor" else {}))
        assert {g: list(k) for g, k in allocate(model).items()} == {
            g: list(k) for g, k in _allocate(keras, name, model, 0.5, resource="params").items()}
    with pytest.raises(ValueError, match="Unknown baseline allocator 'random'"):
        baseline_allocator("random", 0.5)
