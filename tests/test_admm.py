"""Tests of dsa_tf.allocation.admm: formulas against numpy, and the budget-reaching behaviour.

Running this file as a script prints the iterations-to-budget tables quoted in the docstring of
``dsa_tf/admm.py``; ``key=value`` arguments override admm_iteration's keyword defaults::

    PYTHONPATH=. python tests/test_admm.py [rho1=0.01] [loss_scale=1e5] ...
"""

from __future__ import annotations

import functools
import itertools
import sys

import numpy as np
import pytest
import tensorflow as tf

from dsa_tf.allocation import admm

ITERATION_BOUND = 150  # documented in dsa_tf/admm.py
MAX_SHORTFALL = 0.05  # R may end at most this far below the budget when first met


def resnet_resource_models(blocks_per_stage: int = 3) -> tuple[tuple[np.ndarray, ...], ...]:
    """FLOPs and params models of a CIFAR ResNet with 1x1 projection shortcuts.

    Groups (DSA's grouping): 3 stage groups (stem or projection conv + every block's second conv),
    then one group per block's first conv: K = 3 + 3 * blocks_per_stage (12 for ResNet-20).
    A conv of group k fed by group n adds its cost to A[k, n]; the stem adds to b.
    """
    widths, sizes = (16, 32, 64), (32, 16, 8)
    k = 3 + 3 * blocks_per_stage
    flops_a, params_a = np.zeros((k, k)), np.zeros((k, k))
    flops_b, params_b = np.zeros(k), np.zeros(k)

    def conv(out_group, in_group, c_in, c_out, kernel, size):
        params = c_in * c_out * kernel * kernel
        if in_group is None:
            flops_b[out_group] += 2 * params * size * size
            params_b[out_group] += params
        else:
            flops_a[out_group, in_group] += 2 * params * size * size
            params_a[out_group, in_group] += params

    conv(0, None, 3, widths[0], 3, sizes[0])
    for stage, (width, size) in enumerate(zip(widths, sizes)):
        for block in range(blocks_per_stage):
            first = 3 + stage * blocks_per_stage + block
            if block == 0 and stage > 0:
                source, c_in = stage - 1, widths[stage - 1]
                conv(stage, source, c_in, width, 1, size)
            else:
                source, c_in = stage, width
            conv(first, source, c_in, width, 3, size)
            conv(stage, first, width, width, 3, size)
    models = []
    for a, b in ((flops_a, flops_b), (params_a, params_b)):
        total = a.sum() + b.sum()
        models.append((a / total, b / total, 0.0))
    return tuple(models)


def stack(models) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """[M, K, K], [M, K], [M] float32 tensors from a list of (A, b, c) numpy models."""
    a = tf.constant(np.stack([m[0] for m in models]), tf.float32)
    b = tf.constant(np.stack([m[1] for m in models]), tf.float32)
    c = tf.constant([m[2] for m in models], tf.float32)
    return a, b, c


def numpy_ratios(keep, models) -> np.ndarray:
    """R_m(a) by explicit double sums over groups."""
    out = []
    for a_m, b_m, c_m in models:
        total = c_m + sum(b_m[k] * keep[k] for k in range(len(keep)))
        for k, n in itertools.product(range(len(keep)), repeat=2):
            total += keep[k] * a_m[k, n] * keep[n]
        out.append(total)
    return np.array(out)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


RESNET20_FLOPS, RESNET20_PARAMS = resnet_resource_models()

# Loss-gradient models: dL_v/dTheta_k = scale * w_k * f(a_k) * (mean + std * noise) with
# f = 4 a (1 - a) when sigmoid-shaped (else 1) and Gaussian or Student-t (2 dof) noise.
LOSS_MODELS = {
    "zero-mean": dict(mean=0.0, std=1.0),
    "negative": dict(mean=-0.5, std=1.0),
    "resisting": dict(mean=-1.0, std=0.3),
    "positive": dict(mean=0.5, std=1.0),
    "per-group": dict(mean=-0.3, std=1.0, weights="geometric"),
    "sigmoid-shaped": dict(mean=-1.0, std=0.3, shaped=True),
    "heavy-tailed": dict(mean=0.0, std=1.0, heavy=True),
}


@functools.cache
def simulator(hyper: tuple[tuple[str, float], ...] = ()):
    """A tf.function running admm_iteration on synthetic loss gradients until the budget is met.

    hyper: (name, value) keyword arguments of admm_iteration. The function returns the number
    of outer iterations and the final state (it stops at max_iterations).
    """

    @tf.function(reduce_retracing=True)
    def simulate(a, b, c, budgets, weights, mean, std, shaped, heavy, seed, max_iterations):
        state = admm.init_state(tf.shape(a)[1], tf.shape(a)[0])
        resource = admm.quadratic_resource(a, b, c)

        def loss_grad(i, theta):
            keep = tf.sigmoid(theta)
            seeds = tf.stack([seed, i])
            noise = tf.random.stateless_normal(tf.shape(theta), seeds)
            uniform = tf.random.stateless_uniform(tf.shape(theta), seeds + 7, minval=1e-6)
            noise = noise / tf.where(heavy, tf.sqrt(-tf.math.log(uniform)), tf.ones_like(noise))
            shape = tf.where(shaped, 4.0 * keep * (1.0 - keep), tf.ones_like(keep))
            return weights * shape * (mean + std * noise)

        def unmet(i, state):
            met = admm.budget_met(tf.sigmoid(state.theta), resource, budgets)
            return tf.logical_and(i < max_iterations, tf.logical_not(met))

        def body(i, state):
            grad = loss_grad(i, state.theta)
            return i + 1, admm.admm_iteration(state, grad, resource, budgets, **dict(hyper))

        return tf.while_loop(unmet, body, (tf.constant(0), state))

    return simulate


def run_allocation(models, budgets, spec, scale, seed, max_iterations=ITERATION_BOUND, **hyper):
    """Iterations to budget (or max_iterations) and final keep ratios of one simulation.

    spec: one of LOSS_MODELS; ``mean`` may be a scalar or a per-group array.
    """
    k = models[0][0].shape[0]
    weights = np.geomspace(0.01, 1.0, k) if spec.get("weights") == "geometric" else np.ones(k)
    a, b, c = stack(models)
    iterations, state = simulator(tuple(sorted(hyper.items())))(
        a,
        b,
        c,
        tf.constant(budgets, tf.float32),
        tf.constant(scale * weights, tf.float32),
        tf.constant(np.broadcast_to(spec["mean"], k), tf.float32),
        tf.constant(spec["std"], tf.float32),
        tf.constant(spec.get("shaped", False)),
        tf.constant(spec.get("heavy", False)),
        tf.constant(seed),
        tf.constant(max_iterations),
    )
    return int(iterations), sigmoid(state.theta.numpy().astype(np.float64))


# ----------------------------------------------------------------------------- formulas


def random_model(rng, m=2, k=5):
    a = rng.uniform(0.0, 1.0, (m, k, k)) * (rng.uniform(size=(m, k, k)) < 0.5)
    return [(a[i], rng.uniform(0.0, 0.2, k), rng.uniform(0.0, 0.1)) for i in range(m)]


def test_resource_ratios_match_bruteforce():
    rng = np.random.default_rng(0)
    models = random_model(rng)
    keep = rng.uniform(0.0, 1.0, 5)
    got = admm.resource_ratios(tf.constant(keep, tf.float32), *stack(models))
    np.testing.assert_allclose(got.numpy(), numpy_ratios(keep, models), rtol=1e-5)


def test_resnet_models_are_normalised():
    for a, b, c in (RESNET20_FLOPS, RESNET20_PARAMS):
        ratio = admm.resource_ratios(tf.ones([12]), *stack([(a, b, c)]))
        np.testing.assert_allclose(ratio.numpy(), [1.0], rtol=1e-5)


def test_resource_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    models = random_model(rng)
    keep = rng.uniform(0.2, 0.8, 5)
    got = admm.resource_gradient(tf.constant(keep, tf.float32),
                                 admm.quadratic_resource(*stack(models))).numpy()
    eps = 1e-6
    for k in range(5):
        step = np.eye(5)[k] * eps
        fd = (numpy_ratios(keep + step, models) - numpy_ratios(keep - step, models)) / (2 * eps)
        np.testing.assert_allclose(got[:, k], fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("budget,violated", [(1.0, 2), (2.5, 1), (4.0, 0)])
def test_z_gradient_matches_autodiff(budget, violated):
    rng = np.random.default_rng(2)
    models = random_model(rng)
    a, b, c = stack(models)
    resource = admm.quadratic_resource(a, b, c)
    budgets = tf.constant([budget, budget], tf.float32)
    theta = tf.constant(rng.normal(1.0, 1.0, 5), tf.float32)
    z = tf.constant(rng.normal(0.0, 1.0, 5), tf.float32)
    assert np.sum(numpy_ratios(sigmoid(z.numpy()), models) > budget) == violated
    u1 = tf.constant([0.7, 0.2], tf.float32)
    u2 = tf.constant(rng.normal(0.0, 0.1, 5), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        objective = admm.z_objective(theta, z, u1, u2, resource, budgets, rho1=0.5, rho2=0.3)
    expected = tape.gradient(objective, z)
    got = admm.z_gradient(theta, z, u1, u2, resource, budgets, rho1=0.5, rho2=0.3)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_theta_gradient_formula_and_projection():
    loss_grad = np.array([2e-5, -3e-5, 0.0, -1e-6], np.float32)
    theta = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    z = np.array([0.0, 2.0, 2.5, 1.0], np.float32)
    u2 = np.array([0.1, 0.5, -0.2, 0.05], np.float32)
    raw = 1e5 * loss_grad + u2 + 0.01 * (theta - z)  # [2.11, -2.5, -0.195, -0.055]
    got = admm.theta_gradient(*map(tf.constant, (loss_grad, theta, z, u2)))
    np.testing.assert_allclose(got.numpy(), np.maximum(raw, 0.0), rtol=1e-5)
    assert got.numpy()[1:].tolist() == [0.0, 0.0, 0.0]  # would increase theta: zeroed


def test_theta_step_never_increases_theta():
    state = admm.init_state(4, 1)._replace(u2=tf.constant([-1.0, 0.0, 0.0, 0.0]))
    new = admm.theta_step(state, tf.constant([-1e-3, -1e-3, 1e-3, 0.0]))
    assert np.all(new.theta.numpy() <= state.theta.numpy())
    assert new.theta.numpy()[2] < 5.0


def test_theta_step_is_adam_on_the_normalised_projected_gradient():
    rng = np.random.default_rng(3)
    grads = rng.normal(0.0, 1e-4, (3, 6)).astype(np.float32)
    z, u2 = rng.normal(4.0, 0.5, 6), rng.normal(0.2, 0.3, 6)
    state = admm.init_state(6, 1)._replace(
        z=tf.constant(z, tf.float32), u2=tf.constant(u2, tf.float32)
    )
    theta, m, v, sq = np.full(6, 5.0), np.zeros(6), np.zeros(6), 0.0
    for t, g in enumerate(grads, start=1):
        state = admm.theta_step(state, tf.constant(g), learning_rate=0.1, rho2=0.01)
        sq = 0.9 * sq + 0.1 * np.mean(g.astype(np.float64) ** 2)
        scale = 1.0 / np.sqrt(sq / (1 - 0.9**t))
        proj = np.maximum(scale * g + u2 + 0.01 * (theta - z), 0.0)
        m = 0.9 * m + 0.1 * proj
        v = 0.999 * v + 0.001 * proj**2
        theta = theta - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(state.theta.numpy(), theta, rtol=1e-5, atol=1e-5)
    assert float(state.step) == 3.0


def test_theta_step_with_fixed_paper_loss_scale():
    state = admm.init_state(2, 1)._replace(u2=tf.constant([0.5, 0.5]))
    new = admm.theta_step(state, tf.constant([-4e-6, -6e-6]), loss_scale=1e5)
    # g = 1e5 * grad + u2 = [0.1, -0.1] -> projected [0.1, 0]; first Adam step = lr * sign(g)
    np.testing.assert_allclose(new.theta.numpy(), [4.9, 5.0], rtol=1e-6)


def test_dual_update_formula():
    u2, theta, z = np.array([0.1, -0.2]), np.array([3.0, 1.0]), np.array([1.0, 2.0])
    got = admm.dual_update(*(tf.constant(x, tf.float32) for x in (u2, theta, z)), rho2=0.01)
    np.testing.assert_allclose(got.numpy(), u2 + 0.01 * (theta - z), rtol=1e-6)


def test_single_z_step_matches_formulas():
    models = [RESNET20_FLOPS, RESNET20_PARAMS]
    a, b, c = stack(models)
    resource = admm.quadratic_resource(a, b, c)
    budgets = np.array([0.5, 0.6])
    theta, z = np.full(12, 3.0), np.linspace(2.0, 3.0, 12)
    u1, u2 = np.array([2.0, 0.5]), np.full(12, 0.01)

    # dJ/dz_k by central differences of J evaluated in numpy
    def objective(zz):
        viol = np.maximum(numpy_ratios(sigmoid(zz), models) - budgets, 0.0)
        return (
            np.sum(u1 * viol + 0.5 * viol**2)
            + u2 @ (theta - zz)
            + 0.005 * np.sum((theta - zz) ** 2)
        )

    eps = 1e-5
    grad = np.array(
        [(objective(z + eps * e) - objective(z - eps * e)) / (2 * eps) for e in np.eye(12)]
    )
    new_z, new_u1 = admm.z_steps(
        *(tf.constant(x, tf.float32) for x in (theta, z, u1, u2)),
        resource,
        tf.constant(budgets, tf.float32),
        steps=1,
        learning_rate=1e-3,
        rho1=1.0,
        rho2=0.01,
    )
    expected_z = z - 1e-3 * np.sign(grad)
    np.testing.assert_allclose(new_z.numpy(), expected_z, rtol=1e-6)
    violation = np.maximum(numpy_ratios(sigmoid(expected_z), models) - budgets, 0.0)
    assert violation.min() > 0.0  # both constraints active: u1 really grows
    np.testing.assert_allclose(new_u1.numpy(), u1 + 1.0 * violation, rtol=1e-5)


def test_z_steps_reduce_violation_over_budget():
    a, b, c = stack([RESNET20_FLOPS])
    resource = admm.quadratic_resource(a, b, c)
    budgets = tf.constant([0.5])
    theta = tf.fill([12], 5.0)
    before = admm.resource_ratios(tf.sigmoid(theta), a, b, c).numpy()[0]
    z, u1 = admm.z_steps(theta, theta, tf.zeros([1]), tf.zeros([12]), resource, budgets)
    after = admm.resource_ratios(tf.sigmoid(z), a, b, c).numpy()[0]
    assert 0.5 < after < before
    assert float(u1[0]) > 0.0
    np.testing.assert_allclose(z.numpy(), 5.0 - 50 * 1e-3, rtol=1e-5)  # every step is down


def test_z_steps_leave_z_when_under_budget():
    a, b, c = stack([RESNET20_FLOPS, RESNET20_PARAMS])
    resource = admm.quadratic_resource(a, b, c)
    theta = tf.constant(np.linspace(-1.0, 2.0, 12), tf.float32)
    u1 = tf.constant([3.0, 1.0])
    z, new_u1 = admm.z_steps(theta, theta, u1, tf.zeros([12]), resource, tf.constant([1.0, 1.0]))
    np.testing.assert_allclose(z.numpy(), theta.numpy(), atol=1e-6)
    np.testing.assert_allclose(new_u1.numpy(), u1.numpy())


def test_plain_gradient_z_steps_cannot_move_z():
    """Why z_steps takes sign steps: plain gradient steps at the paper's 1e-3 leave z near 5.

    Theta is held at 5 and u2 at 0 for 100 outer iterations of 50 z steps each.
    """
    a, b, c = stack([RESNET20_FLOPS])
    resource = admm.quadratic_resource(a, b, c)
    budgets = tf.constant([0.5])
    theta, u2 = tf.fill([12], 5.0), tf.zeros([12])

    @tf.function
    def plain_steps(z, u1):
        def body(i, z, u1):
            grad = admm.z_gradient(theta, z, u1, u2, resource, budgets, rho1=0.01, rho2=0.01)
            z = z - 1e-3 * grad
            excess = admm.resource_ratios(tf.sigmoid(z), a, b, c) - budgets
            return i + 1, z, u1 + 0.01 * tf.nn.relu(excess)

        return tf.while_loop(lambda i, z, u1: i < 100 * 50, body, (0, z, u1))[1]

    @tf.function
    def sign_steps(z, u1):
        def body(i, z, u1):
            return (i + 1, *admm.z_steps(theta, z, u1, u2, resource, budgets))

        return tf.while_loop(lambda i, z, u1: i < 100, body, (0, z, u1))[1]

    ratio = {
        name: numpy_ratios(sigmoid(fn(theta, tf.zeros([1])).numpy()), [RESNET20_FLOPS])[0]
        for name, fn in (("plain", plain_steps), ("sign", sign_steps))
    }
    assert ratio["plain"] > 0.95 and ratio["sign"] < 0.51, ratio


def test_budget_met_all_constraints():
    a, b, c = stack([RESNET20_FLOPS, RESNET20_PARAMS])
    resource = admm.quadratic_resource(a, b, c)
    keep = np.full(12, 0.7)
    flops, params = numpy_ratios(keep, [RESNET20_FLOPS, RESNET20_PARAMS])
    keep_t = tf.constant(keep, tf.float32)
    both = tf.constant([flops + 0.01, params + 0.01], tf.float32)
    one = tf.constant([flops + 0.01, params - 0.01], tf.float32)
    assert bool(admm.budget_met(keep_t, resource, both))
    assert not bool(admm.budget_met(keep_t, resource, one))


def test_init_state():
    state = admm.init_state(3, 2)
    np.testing.assert_array_equal(state.theta.numpy(), [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(state.z.numpy(), state.theta.numpy())
    assert state.u1.shape == (2,) and not np.any(state.u1.numpy())
    assert not np.any(state.u2.numpy())
    assert all(t.dtype == tf.float32 for t in state)


def test_admm_iteration_order_and_tf_function():
    a, b, c = stack([RESNET20_FLOPS, RESNET20_PARAMS])
    resource = admm.quadratic_resource(a, b, c)
    budgets = tf.constant([0.5, 0.5])
    state = admm.init_state(12, 2)._replace(u2=tf.fill([12], 0.01))
    grad = tf.constant(np.random.default_rng(4).normal(0, 1e-4, 12), tf.float32)
    eager = admm.admm_iteration(state, grad, resource, budgets)
    graph = tf.function(admm.admm_iteration)(state, grad, resource, budgets)
    for x, y in zip(eager, graph):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6)
    stepped = admm.theta_step(state, grad)
    z, u1 = admm.z_steps(stepped.theta, state.z, state.u1, state.u2, resource, budgets)
    np.testing.assert_allclose(eager.theta.numpy(), stepped.theta.numpy())
    np.testing.assert_allclose(eager.z.numpy(), z.numpy())
    np.testing.assert_allclose(eager.u1.numpy(), u1.numpy())
    np.testing.assert_allclose(
        eager.u2.numpy(), 0.01 + 0.01 * (stepped.theta.numpy() - z.numpy()), rtol=1e-5
    )


def test_floor_bounds_theta_and_z_and_the_budget_is_still_reached():
    a, b, c = stack([RESNET20_FLOPS])
    resource = admm.quadratic_resource(a, b, c)
    budgets, floor = tf.constant([0.3]), tf.constant(-0.5)  # keep ratios >= 0.378
    state, step = admm.init_state(12, 1), tf.function(admm.admm_iteration)
    rng = np.random.default_rng(0)
    free = state
    for _ in range(300):
        grad = tf.constant(rng.normal(0, 1e-4, 12), tf.float32)
        state = step(state, grad, resource, budgets, floor=floor)
        free = step(free, grad, resource, budgets)
        assert float(tf.reduce_min(state.theta)) >= -0.5 and float(tf.reduce_min(state.z)) >= -0.5
        if admm.budget_met(tf.sigmoid(state.theta), resource, budgets):
            break
    assert admm.budget_met(tf.sigmoid(state.theta), resource, budgets)
    assert float(tf.reduce_min(free.theta)) < -0.5  # without the floor some group goes lower


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.9])
@pytest.mark.parametrize(
    "kind,scale,seed",
    [
        ("zero-mean", 1e-6, 0),
        ("resisting", 1e-3, 1),
        ("positive", 1e-4, 2),
        ("sigmoid-shaped", 1e-5, 3),
        ("per-group", 1e-3, 4),
        ("heavy-tailed", 1e-4, 5),
    ],
)
def test_flops_budget_reached_within_bound(budget, kind, scale, seed):
    spec = LOSS_MODELS[kind]
    iterations, keep = run_allocation([RESNET20_FLOPS], [budget], spec, scale, seed)
    ratio = numpy_ratios(keep, [RESNET20_FLOPS])[0]
    assert iterations <= ITERATION_BOUND, (iterations, ratio)
    assert budget - MAX_SHORTFALL <= ratio <= budget + 1e-6
    # z moves 0.05 logits per iteration: a uniform allocation a = sqrt(B) takes z_time
    z_time = (5.0 - np.log(np.sqrt(budget) / (1.0 - np.sqrt(budget)))) / 0.05
    assert iterations >= 0.6 * z_time


@pytest.mark.parametrize("budgets", [(0.3, 0.5), (0.6, 0.3)])
@pytest.mark.parametrize("kind,scale,seed", [("negative", 1e-3, 0), ("zero-mean", 1e-6, 1)])
def test_flops_and_params_budgets_reached_within_bound(budgets, kind, scale, seed):
    models = [RESNET20_FLOPS, RESNET20_PARAMS]
    iterations, keep = run_allocation(models, list(budgets), LOSS_MODELS[kind], scale, seed)
    ratios = numpy_ratios(keep, models)
    assert iterations <= ITERATION_BOUND, (iterations, ratios)
    assert np.all(ratios <= np.array(budgets) + 1e-6)
    assert np.max(ratios - np.array(budgets)) >= -MAX_SHORTFALL  # the binding one is close


@pytest.mark.parametrize("budget", [0.25, 0.5])
def test_loss_gradient_steers_which_groups_shrink(budget):
    """Groups whose loss falls as they grow (dL/dTheta < 0) keep more than the others.

    Swapping the favoured set must swap the allocation (the sets have similar costs).
    """
    set_a, set_b = [3, 4, 6, 7], [5, 8, 9, 10]  # block first convs
    keep = {}
    for name, favoured in (("a", set_a), ("b", set_b)):
        mean = np.zeros(12)
        mean[favoured] = -1.0  # plus unit noise on every group
        _, keep[name] = run_allocation(
            [RESNET20_FLOPS], [budget], dict(mean=mean, std=1.0), 1e-4, 0
        )
    gap_a = keep["a"][set_a].mean() - keep["a"][set_b].mean()
    gap_b = keep["b"][set_b].mean() - keep["b"][set_a].mean()
    assert gap_a > 0.1 and gap_b > 0.1, (keep["a"], keep["b"])


def test_fixed_paper_loss_scale_is_overwhelmed_by_large_gradients():
    """With s = 1e5 a consistent dL/dTheta of -1e-3 (scaled: -100) holds every group."""
    iterations, keep = run_allocation(
        [RESNET20_FLOPS], [0.5], LOSS_MODELS["resisting"], 1e-3, 0, loss_scale=1e5
    )
    assert iterations == ITERATION_BOUND
    assert numpy_ratios(keep, [RESNET20_FLOPS])[0] > 0.9


def sweep(models, seeds: int = 3, **hyper) -> None:
    """Prints iterations-to-budget min/median/max and the largest shortfall per budget.

    Every constraint gets the same budget; the shortfall is that of the binding constraint.
    """
    print("budget  iterations min/median/max  max shortfall  (unreached in 400)")
    for budget in (0.25, 0.33, 0.5, 0.75, 0.9):
        iterations, shortfall, unreached = [], [], 0
        for spec, scale, seed in itertools.product(
            LOSS_MODELS.values(), (1e-6, 1e-3), range(seeds)
        ):
            budgets = [budget] * len(models)
            n, keep = run_allocation(models, budgets, spec, scale, seed, 400, **hyper)
            unreached += n >= 400
            iterations.append(n)
            shortfall.append(np.min(budget - numpy_ratios(keep, models)))
        print(
            f"{budget:5}   {min(iterations)}/{int(np.median(iterations))}/{max(iterations)}"
            f"  {max(shortfall):.3f}  ({unreached})"
        )


if __name__ == "__main__":
    pairs = (arg.split("=") for arg in sys.argv[1:])
    overrides = {k: int(v) if v.isdigit() else float(v) for k, v in pairs}
    for title, models in (
        ("ResNet-20 FLOPs (K=12)", [RESNET20_FLOPS]),
        ("ResNet-20 FLOPs + params (K=12)", [RESNET20_FLOPS, RESNET20_PARAMS]),
        ("ResNet-56 FLOPs (K=30)", [resnet_resource_models(blocks_per_stage=9)[0]]),
    ):
        print(title, overrides)
        sweep(models, **overrides)


def test_any_differentiable_resource_function():
    """A resource that is not a quadratic form (a per-group cubic, as a measured latency curve
    can be): its gradient is exact and the ADMM meets the budget within the bound."""
    weights = np.geomspace(0.05, 1.0, 6)
    weights = tf.constant(weights / weights.sum(), tf.float32)

    def resource(keep):
        return tf.reshape(tf.reduce_sum(weights * (0.2 * keep + 0.8 * keep**3)), [1])

    keep = np.linspace(0.2, 0.9, 6).astype("float32")
    gradient = admm.resource_gradient(tf.constant(keep), resource).numpy()
    np.testing.assert_allclose(gradient[0], weights.numpy() * (0.2 + 2.4 * keep**2), rtol=1e-5)
    budgets = tf.constant([0.5])
    step = tf.function(lambda state, grad: admm.admm_iteration(state, grad, resource, budgets))
    state, rng = admm.init_state(6, 1), np.random.default_rng(0)
    while not bool(admm.budget_met(tf.sigmoid(state.theta), resource, budgets)) \
            and state.step < ITERATION_BOUND:
        state = step(state, tf.constant(rng.normal(0.0, 1e-4, 6), tf.float32))
    assert bool(admm.budget_met(tf.sigmoid(state.theta), resource, budgets))
    assert float(resource(tf.sigmoid(state.theta))[0]) > 0.45  # met, not overshot
