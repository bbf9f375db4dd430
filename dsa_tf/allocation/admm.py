"""ADMM-style budget updates of DSA as pure functions over explicit tensors.

Everything here is a plain function of float32 tensors (state in, state out, as in optax): no
Keras, no Python-side state, and every function works eagerly and inside ``tf.function``. The
caller (e.g. a Keras callback) keeps an :class:`ADMMState` in variables and assigns the result.

Notation: K prunable groups, M resource constraints. Keep ratios ``a = sigmoid(Theta)``.

Resource model (built elsewhere, normalised so that ``R_m(1) == 1``): any differentiable
TensorFlow function ``resource(a) -> [M]`` of the keep ratios, non-decreasing in each of
them, with budgets ``B: [M]`` in (0, 1]; its gradient ``dR_m/da`` comes from automatic
differentiation. FLOPs and params are exact quadratic forms (:func:`quadratic_resource`)::

    R_m(a) = a^T A_m a + b_m^T a + c_m,        dR_m/da = (A_m + A_m^T) a + b_m
    A: [M, K, K] >= 0,  b: [M, K] >= 0,  c: [M] >= 0

One outer iteration (:func:`admm_iteration`, DSA section 4.3, in this order):

1. Theta step on ``s * L_v(Theta) + u2^T (Theta - z) + rho2/2 ||Theta - z||^2``; its gradient
   ``g = s * dL_v/dTheta + u2 + rho2 (Theta - z)`` is projected to ``max(g, 0)`` so keep ratios
   only decrease (:func:`theta_gradient`, :func:`theta_step`).
2. ``steps`` inner steps on z of ::

       J(z) = sum_m [u1_m v_m + rho1/2 v_m^2] + u2^T (Theta - z) + rho2/2 ||Theta - z||^2,
       v_m = [R_m(sigmoid(z)) - B_m]_+,
       dJ/dz = sum_m (u1_m + rho1 v_m) 1[v_m > 0] dR_m/da * a (1 - a) - u2 - rho2 (Theta - z),

   each followed by ``u1_m += rho1 * [R_m(sigmoid(z)) - B_m]_+`` (:func:`z_steps`).
3. ``u2 += rho2 (Theta - z)`` (:func:`dual_update`).

Allocation stops the first time :func:`budget_met` holds for ``sigmoid(Theta)``.

Initial state (:func:`init_state`): ``Theta = 5`` (a ~ 0.993, as in the released code). The paper
is silent on z and the duals; we start from ``z = Theta`` and ``u1 = u2 = 0``, so the first
iteration begins feasible for the ``Theta = z`` constraint and with no accumulated pull.

Documented choices. The paper leaves the Theta optimiser open, and its z-step and loss-scale
defaults do not work as-is once R is a fraction of the full model. Numbers below are from the
simulation in ``tests/test_admm.py`` (synthetic loss gradients, see the table further down;
``PYTHONPATH=. python tests/test_admm.py key=value`` reruns it with an override):

* z steps are sign (normalised) steps, ``z -= learning_rate * sign(dJ/dz)``, with the paper's
  learning rate 1e-3 and 50 steps. Plain gradient steps at 1e-3 cannot move z: at z = 5 the
  sigmoid factor a(1 - a) = 0.0066 makes dR/dz ~ 1e-3, and with Theta held at 5, 100 outer
  iterations leave R(sigmoid(z)) above 0.95 for B = 0.5 (sign steps: within 0.005 of the
  budget after 83; ``test_plain_gradient_z_steps_cannot_move_z``). Sign steps keep the fixed
  points of J and move each z_k by at most 50 * 1e-3 = 0.05 logits per outer iteration, so z
  reaches the budget after about ``(5 - logit(sqrt(B))) / 0.05`` iterations (uniform
  allocation): ~100 for B = 0.25, ~40 for B = 0.9. This is what makes the schedule predictable.
* ``rho1 = 1.0`` (paper: 0.01). With sign steps z_k moves down only while
  ``u1 dR/dz_k > u2_k + rho2 (Theta_k - z_k)``; with ``rho1 = 0.01`` u1 grows too slowly to
  beat that tether when the violation is small. Measured with ``rho1=0.01``: 12 of 42 runs at
  B = 0.9 did not reach the budget in 400 iterations (ResNet-20 and ResNet-56), and the worst
  case at B = 0.25 took 236. Larger values saturate: the worst B = 0.9 run (ResNet-20) takes
  122 iterations at rho1 = 0.3, 90 at 1 and 88 at 10; other budgets move by 4 at most.
* Theta optimiser: Adam (beta1 0.9, beta2 0.999, eps 1e-8), learning rate 0.1, on the
  projected gradient, moments in the state. Adam's step does not depend on the gradient's scale
  and is about the learning rate, so a keep ratio moves by ~0.1 logits per iteration at most
  and R by at most ~0.25 * 0.1 * (Adam's step ratio, <= ~2) per iteration near the budget: the
  first iteration that meets the budget ended at most 0.036 below it. 0.1 is twice the speed of
  z, so Theta catches up once the ADMM pull beats the loss. Measured alternatives (ResNet-20,
  B = 0.25, min/median/max): 0.05 gives 105/126/134; 0.2 gives 40/81/100, a 2.5x spread and
  shortfalls up to 0.049 (0.1: 79/99/112, shortfall <= 0.036).
* Adaptive loss scale (replaces the fixed ``s_v = 1e5``): ``s_t = loss_weight / RMS_t`` where
  ``RMS_t^2`` is a bias-corrected moving average (decay 0.9) of ``mean_k (dL_v/dTheta_k)^2``,
  and ``loss_weight = 1``. Real dL_v/dTheta spans ~1e-6..1e-3, so a fixed 1e5 maps it to
  0.1..100, and a consistently negative gradient of 100 needs u2 ~ 100, thousands of
  iterations at ``rho2 = 0.01``: with ``loss_scale=1e5``, 3-6 of 42 runs per budget did not
  reach it in 400 iterations. A positive rescaling of the objective does not change the
  constrained minimiser; normalising it makes the balance between loss and ADMM pull the same
  at every gradient scale while keeping the relative sizes across groups, which decide which
  groups shrink. Decay 0.9 tracks the growth of dL/dTheta = a (1 - a) dL/da as keep ratios
  fall (0.99 lagged and let the tail reach 174 iterations on ResNet-56). ``loss_weight = 1``
  lets groups the loss favours hold until the budget is met. Smaller weights hold them only
  briefly, and the dual u2 they wind up meanwhile then drives them below the others: in the
  steering test at B = 0.25 the favoured groups' mean keep-ratio lead was +0.24 at weight 1,
  +0.06 at 0.7 and -0.10 (reversed) at 0.5. Pass ``loss_scale=1e5`` for the paper's scale.

Optional box constraint (``floor`` of :func:`admm_iteration`, ``DSACallback(keep_floor=...)``):
theta and z are projected onto ``theta >= floor`` after their steps, so no keep ratio goes
below ``sigmoid(floor)``; the paper has none. Measured on the allocation benchmark in
BENCHMARKS.md ("Why DSA's widths follow noise").

Kept from the paper: rho2 = 0.01, 50 z steps at learning rate 1e-3, Theta init 5, the
non-negative projection, the order of the three updates and the u1/u2 dual formulas.

Measured iterations to the budget (first outer iteration with R(sigmoid(Theta)) <= B),
min/median/max over 7 loss-gradient models (zero-mean, negative-, strongly negative- and
positive-mean, per-group scales 0.01..1, sigmoid-shaped a(1 - a) times a negative mean,
Student-t), gradient scales 1e-6 and 1e-3 and 3 seeds (42 runs per budget), and the largest
shortfall ``B - R`` at that iteration; every run reached the budget (FLOPs+params: both
budgets B)::

    budget                  0.25        0.33        0.5         0.75        0.9
    ResNet-20 FLOPs         79/99/112   73/95/107   63/88/103   46/65/96    30/41/90
      shortfall <=          0.031       0.028       0.036       0.020       0.009
    ResNet-20 FLOPs+params  79/100/112  73/96/107   63/88/103   47/65/96    30/41/89
    ResNet-56 FLOPs         78/97/114   73/95/109   62/88/102   45/64/96    30/42/150

Bound: 150 outer iterations for every budget in [0.25, 0.9] (the tests assert it on
ResNet-20). Typical runs take about ``(5 - logit(sqrt(B))) / 0.05`` iterations, the time z
needs; the tail comes from loss gradients that resist every group, where u2 must first grow to
the loss's size. The worst case, 150 on ResNet-56 at B = 0.9, is a sigmoid-shaped resisting
gradient: there z takes the budget from the 3 stage groups only (dR/da ~9x that of a block
group), and their normalised resistance is 2-4x the others'. It is a bound for these gradient
models, not for adversarial ones: a loss that keeps growing against the pull can hold Theta
forever.

Example:
    >>> import tensorflow as tf
    >>> A = tf.constant([[[0.0, 0.5], [0.5, 0.0]]])   # R(a) = a0 * a1, one constraint
    >>> resource = quadratic_resource(A, tf.zeros([1, 2]), tf.zeros([1]))
    >>> budgets = tf.constant([0.5])
    >>> step = tf.function(admm_iteration)
    >>> state = init_state(num_groups=2, num_constraints=1)
    >>> while not budget_met(tf.sigmoid(state.theta), resource, budgets):
    ...     loss_grad = tf.random.normal([2], stddev=1e-4)   # dL_v/dTheta of a batch
    ...     state = step(state, loss_grad, resource, budgets)
    >>> int(state.step) <= 150
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

Resource = Callable[[tf.Tensor], tf.Tensor]  # keep ratios [K] -> resource fractions [M]

THETA_INIT = 5.0
RHO1 = 1.0
RHO2 = 0.01
Z_STEPS = 50
Z_LEARNING_RATE = 1e-3
THETA_LEARNING_RATE = 0.1
LOSS_WEIGHT = 1.0
LOSS_BETA = 0.9
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8


class ADMMState(NamedTuple):
    """State of the budget ADMM; every field is a float32 tensor.

    Attributes:
        theta: [K] logits of the keep ratios, ``a = sigmoid(theta)``.
        z: [K] auxiliary copy of theta that carries the budget constraint.
        u1: [M] duals of the budget constraints (non-decreasing).
        u2: [K] duals of the constraint ``theta == z``.
        adam_m: [K] Adam first moment of the projected theta gradient.
        adam_v: [K] Adam second moment of the projected theta gradient.
        loss_grad_sq: [] moving average of ``mean(dL_v/dtheta ** 2)`` (adaptive loss scale).
        step: [] number of theta steps taken so far (float32 count).

    Example:
        >>> state = init_state(num_groups=3, num_constraints=2)
        >>> [tuple(t.shape) for t in state[:4]]
        [(3,), (3,), (2,), (3,)]
    """

    theta: tf.Tensor
    z: tf.Tensor
    u1: tf.Tensor
    u2: tf.Tensor
    adam_m: tf.Tensor
    adam_v: tf.Tensor
    loss_grad_sq: tf.Tensor
    step: tf.Tensor


def init_state(num_groups: int, num_constraints: int, theta_init: float = THETA_INIT) -> ADMMState:
    """Initial state: ``theta = theta_init``, ``z = theta``, duals and moments zero.

    The paper fixes only ``theta_init = 5`` (released code); it is silent on z and the duals.

    Args:
        num_groups: K, the number of prunable groups.
        num_constraints: M, the number of resource constraints.
        theta_init: initial logit of every keep ratio (5.0 gives a ~ 0.993).

    Returns:
        An :class:`ADMMState` of float32 tensors.

    Example:
        >>> state = init_state(num_groups=2, num_constraints=1)
        >>> state.theta.numpy().tolist(), state.u1.numpy().tolist()
        ([5.0, 5.0], [0.0])
    """
    theta = tf.fill([num_groups], tf.constant(theta_init, tf.float32))
    zeros_k = tf.zeros([num_groups], tf.float32)
    scalar_zero = tf.constant(0.0, tf.float32)
    return ADMMState(
        theta=theta,
        z=theta,
        u1=tf.zeros([num_constraints], tf.float32),
        u2=zeros_k,
        adam_m=zeros_k,
        adam_v=zeros_k,
        loss_grad_sq=scalar_zero,
        step=scalar_zero,
    )


def resource_ratios(keep_ratios: tf.Tensor, A: tf.Tensor, b: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """Resource fractions ``R_m(a) = a^T A_m a + b_m^T a + c_m`` of every constraint.

    Args:
        keep_ratios: [K] keep ratios a.
        A: [M, K, K] quadratic coefficients.
        b: [M, K] linear coefficients.
        c: [M] constants.

    Returns:
        [M] resource ratios.

    Example:
        >>> A = tf.constant([[[0.0, 0.5], [0.5, 0.0]]])
        >>> r = resource_ratios(tf.constant([0.5, 1.0]), A, tf.zeros([1, 2]), tf.zeros([1]))
        >>> r.numpy().tolist()
        [0.5]
    """
    quadratic = tf.einsum("k,mkl,l->m", keep_ratios, A, keep_ratios)
    return quadratic + tf.linalg.matvec(b, keep_ratios) + c


def quadratic_resource(A: tf.Tensor, b: tf.Tensor, c: tf.Tensor) -> Resource:
    """The resource function ``a -> R(a)`` of the quadratic forms (:func:`resource_ratios`).

    Args:
        A: [M, K, K] quadratic coefficients.
        b: [M, K] linear coefficients.
        c: [M] constants.

    Returns:
        A function of the keep ratios [K] returning the [M] resource fractions.

    Example:
        >>> resource = quadratic_resource(tf.constant([[[0.0, 0.5], [0.5, 0.0]]]),
        ...                               tf.zeros([1, 2]), tf.zeros([1]))
        >>> resource(tf.constant([0.5, 1.0])).numpy().tolist()
        [0.5]
    """
    return lambda keep_ratios: resource_ratios(keep_ratios, A, b, c)


def resource_gradient(keep_ratios: tf.Tensor, resource: Resource) -> tf.Tensor:
    """Gradient of every resource fraction w.r.t. the keep ratios, by automatic differentiation.

    Args:
        keep_ratios: [K] keep ratios a.
        resource: the resource function (``a -> [M]``).

    Returns:
        [M, K] ``dR_m/da_k``.

    Example:
        >>> A = tf.constant([[[0.0, 1.0], [0.0, 0.0]]])    # R = a0 * a1
        >>> resource = quadratic_resource(A, tf.zeros([1, 2]), tf.zeros([1]))
        >>> resource_gradient(tf.constant([0.5, 1.0]), resource).numpy().tolist()
        [[1.0, 0.5]]
    """
    with tf.GradientTape() as tape:
        tape.watch(keep_ratios)
        ratios = resource(keep_ratios)
    return tape.jacobian(ratios, keep_ratios)


def budget_met(keep_ratios: tf.Tensor, resource: Resource, budgets: tf.Tensor) -> tf.Tensor:
    """Whether every constraint holds: ``R_m(a) <= B_m`` for all m.

    Args:
        keep_ratios: [K] keep ratios a.
        resource: the resource function (``a -> [M]``).
        budgets: [M] budget fractions.

    Returns:
        [] bool tensor.

    Example:
        >>> resource = quadratic_resource(tf.constant([[[0.0, 0.5], [0.5, 0.0]]]),
        ...                               tf.zeros([1, 2]), tf.zeros([1]))
        >>> bool(budget_met(tf.constant([0.5, 0.9]), resource, tf.constant([0.5])))
        True
    """
    return tf.reduce_all(resource(keep_ratios) <= budgets)


def theta_gradient(
    loss_grad_theta: tf.Tensor,
    theta: tf.Tensor,
    z: tf.Tensor,
    u2: tf.Tensor,
    *,
    rho2: float = RHO2,
    loss_scale: float | tf.Tensor = 1e5,
) -> tf.Tensor:
    """Projected gradient of ``s L_v + u2^T (theta - z) + rho2/2 ||theta - z||^2``.

    ``g = loss_scale * dL_v/dtheta + u2 + rho2 (theta - z)``, returned as ``max(g, 0)`` so that
    a descent step never increases theta (keep ratios only decrease).

    Args:
        loss_grad_theta: [K] ``dL_v/dtheta`` from one validation batch.
        theta: [K] current logits.
        z: [K] auxiliary variable.
        u2: [K] dual of ``theta == z``.
        rho2: penalty of ``theta == z``.
        loss_scale: s, a float or scalar tensor (paper: 1e5; :func:`theta_step` adapts it).

    Returns:
        [K] non-negative gradient.

    Example:
        >>> g = theta_gradient(tf.constant([1e-5, -1e-5]), tf.zeros([2]), tf.zeros([2]),
        ...                    tf.zeros([2]))
        >>> [round(x, 4) for x in g.numpy().tolist()]
        [1.0, 0.0]
    """
    g = loss_scale * loss_grad_theta + u2 + rho2 * (theta - z)
    return tf.maximum(g, 0.0)


def adaptive_loss_scale(
    loss_grad_sq: tf.Tensor,
    step: tf.Tensor,
    *,
    loss_weight: float = LOSS_WEIGHT,
    loss_beta: float = LOSS_BETA,
) -> tf.Tensor:
    """Loss scale ``loss_weight / RMS`` from the bias-corrected moving mean square.

    Args:
        loss_grad_sq: [] moving average of ``mean(dL_v/dtheta ** 2)`` after ``step`` updates.
        step: [] number of updates of ``loss_grad_sq`` (>= 1).
        loss_weight: target RMS of the scaled loss gradient.
        loss_beta: decay of the moving average.

    Returns:
        [] scale; a zero gradient history gives a large but finite scale.

    Example:
        >>> # after one update with a mean square of 1e-8 (decay 0.9): RMS 1e-4
        >>> s = adaptive_loss_scale(tf.constant((1 - 0.9) * 1e-8), tf.constant(1.0))
        >>> round(float(s))
        10000
    """
    corrected = loss_grad_sq / (1.0 - tf.pow(loss_beta, step))
    return loss_weight / (tf.sqrt(corrected) + 1e-30)


def theta_step(
    state: ADMMState,
    loss_grad_theta: tf.Tensor,
    *,
    learning_rate: float = THETA_LEARNING_RATE,
    rho2: float = RHO2,
    loss_scale: float | None = None,
    loss_weight: float = LOSS_WEIGHT,
    loss_beta: float = LOSS_BETA,
    beta1: float = ADAM_BETA1,
    beta2: float = ADAM_BETA2,
    epsilon: float = ADAM_EPSILON,
) -> ADMMState:
    """One Adam step of theta on the projected gradient of :func:`theta_gradient`.

    Updates the loss-gradient moving mean square, the Adam moments and the step count too.

    Args:
        state: current state.
        loss_grad_theta: [K] ``dL_v/dtheta`` from one validation batch.
        learning_rate: Adam learning rate (~ the largest logit change per step).
        rho2: penalty of ``theta == z``.
        loss_scale: fixed loss scale (paper: 1e5); None (default) uses
            :func:`adaptive_loss_scale`.
        loss_weight: target RMS of the scaled loss gradient when adaptive.
        loss_beta: decay of the loss-gradient moving mean square.
        beta1: Adam first-moment decay.
        beta2: Adam second-moment decay.
        epsilon: Adam epsilon.

    Returns:
        The state with new theta, adam_m, adam_v, loss_grad_sq and step.

    Example:
        >>> state = init_state(num_groups=2, num_constraints=1)
        >>> new = theta_step(state, tf.constant([1e-4, -1e-4]))
        >>> [round(x, 3) for x in new.theta.numpy().tolist()]  # first Adam step: lr * sign(g)
        [4.9, 5.0]
    """
    step = state.step + 1.0
    loss_grad_sq = loss_beta * state.loss_grad_sq + (1.0 - loss_beta) * tf.reduce_mean(
        tf.square(loss_grad_theta)
    )
    if loss_scale is None:
        scale = adaptive_loss_scale(
            loss_grad_sq, step, loss_weight=loss_weight, loss_beta=loss_beta
        )
    else:
        scale = loss_scale
    g = theta_gradient(loss_grad_theta, state.theta, state.z, state.u2, rho2=rho2, loss_scale=scale)
    m = beta1 * state.adam_m + (1.0 - beta1) * g
    v = beta2 * state.adam_v + (1.0 - beta2) * tf.square(g)
    m_hat = m / (1.0 - tf.pow(beta1, step))
    v_hat = v / (1.0 - tf.pow(beta2, step))
    theta = state.theta - learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon)
    return state._replace(theta=theta, adam_m=m, adam_v=v, loss_grad_sq=loss_grad_sq, step=step)


def z_objective(
    theta: tf.Tensor,
    z: tf.Tensor,
    u1: tf.Tensor,
    u2: tf.Tensor,
    resource: Resource,
    budgets: tf.Tensor,
    *,
    rho1: float = RHO1,
    rho2: float = RHO2,
) -> tf.Tensor:
    """The z objective ``J(z)`` (see the module docstring).

    Args:
        theta: [K] logits.
        z: [K] auxiliary variable.
        u1: [M] budget duals.
        u2: [K] duals of ``theta == z``.
        resource: the resource function (``a -> [M]``).
        budgets: [M] budget fractions.
        rho1: budget penalty.
        rho2: penalty of ``theta == z``.

    Returns:
        [] objective value.

    Example:
        >>> resource = quadratic_resource(tf.constant([[[0.0, 0.5], [0.5, 0.0]]]),
        ...                               tf.zeros([1, 2]), tf.zeros([1]))
        >>> j = z_objective(tf.zeros([2]), tf.zeros([2]), tf.ones([1]), tf.zeros([2]),
        ...                 resource, tf.constant([0.2]))
        >>> round(float(j), 6)  # R = 0.25: violation 0.05, 1 * 0.05 + 0.5 * 0.05 ** 2
        0.05125
    """
    violation = tf.nn.relu(resource(tf.sigmoid(z)) - budgets)
    diff = theta - z
    return (
        tf.reduce_sum(u1 * violation + 0.5 * rho1 * tf.square(violation))
        + tf.reduce_sum(u2 * diff)
        + 0.5 * rho2 * tf.reduce_sum(tf.square(diff))
    )


def z_gradient(
    theta: tf.Tensor,
    z: tf.Tensor,
    u1: tf.Tensor,
    u2: tf.Tensor,
    resource: Resource,
    budgets: tf.Tensor,
    *,
    rho1: float = RHO1,
    rho2: float = RHO2,
) -> tf.Tensor:
    """``dJ/dz`` of :func:`z_objective`, with the same arguments::

        dJ/dz = sum_m (u1_m + rho1 v_m) 1[v_m > 0] dR_m/da * a (1 - a) - u2 - rho2 (theta - z)

    with ``dR_m/da`` from :func:`resource_gradient`.

    Returns:
        [K] gradient.

    Example:
        >>> resource = quadratic_resource(tf.zeros([1, 2, 2]), tf.zeros([1, 2]), tf.zeros([1]))
        >>> g = z_gradient(tf.zeros([2]), tf.zeros([2]), tf.zeros([1]), tf.ones([2]),
        ...                resource, tf.ones([1]))
        >>> g.numpy().tolist()  # under budget: only -u2 - rho2 (theta - z)
        [-1.0, -1.0]
    """
    a = tf.sigmoid(z)
    excess = resource(a) - budgets
    weight = tf.where(excess > 0.0, u1 + rho1 * excess, tf.zeros_like(excess))
    budget_grad = tf.linalg.matvec(resource_gradient(a, resource), weight, transpose_a=True)
    return budget_grad * a * (1.0 - a) - u2 - rho2 * (theta - z)


def z_steps(
    theta: tf.Tensor,
    z: tf.Tensor,
    u1: tf.Tensor,
    u2: tf.Tensor,
    resource: Resource,
    budgets: tf.Tensor,
    *,
    steps: int = Z_STEPS,
    learning_rate: float = Z_LEARNING_RATE,
    rho1: float = RHO1,
    rho2: float = RHO2,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inner z loop: ``steps`` sign steps on J, each followed by the u1 dual ascent.

    ``z -= learning_rate * sign(dJ/dz)``, then ``u1 += rho1 * [R(sigmoid(z)) - B]_+``.

    Args:
        theta: [K] logits (already updated by the theta step).
        z: [K] auxiliary variable.
        u1: [M] budget duals.
        u2: [K] duals of ``theta == z``.
        resource: the resource function (``a -> [M]``).
        budgets: [M] budget fractions.
        steps: number of inner steps (paper: 50).
        learning_rate: step per coordinate (paper: 1e-3).
        rho1: budget penalty and dual step (paper: 0.01, see the module docstring).
        rho2: penalty of ``theta == z``.

    Returns:
        ``(z, u1)`` after the inner loop.

    Example:
        >>> resource = quadratic_resource(tf.constant([[[0.0, 0.5], [0.5, 0.0]]]),
        ...                               tf.zeros([1, 2]), tf.zeros([1]))
        >>> theta = tf.fill([2], 5.0)
        >>> z, u1 = z_steps(theta, theta, tf.zeros([1]), tf.zeros([2]), resource,
        ...                 tf.constant([0.5]))
        >>> [round(x, 3) for x in z.numpy().tolist()]  # over budget: 50 steps of 1e-3 down
        [4.95, 4.95]
    """

    def body(i: tf.Tensor, z: tf.Tensor, u1: tf.Tensor) -> tuple[tf.Tensor, ...]:
        grad = z_gradient(theta, z, u1, u2, resource, budgets, rho1=rho1, rho2=rho2)
        z = z - learning_rate * tf.sign(grad)
        excess = resource(tf.sigmoid(z)) - budgets
        return i + 1, z, u1 + rho1 * tf.nn.relu(excess)

    _, z, u1 = tf.while_loop(lambda i, z, u1: i < steps, body, (tf.constant(0), z, u1))
    return z, u1


def dual_update(u2: tf.Tensor, theta: tf.Tensor, z: tf.Tensor, *, rho2: float = RHO2) -> tf.Tensor:
    """Dual ascent of ``theta == z``: ``u2 + rho2 (theta - z)``.

    Args:
        u2: [K] current dual.
        theta: [K] logits.
        z: [K] auxiliary variable.
        rho2: penalty of ``theta == z``.

    Returns:
        [K] new dual.

    Example:
        >>> u2 = dual_update(tf.zeros([1]), tf.constant([5.0]), tf.constant([3.0]))
        >>> round(float(u2[0]), 6)
        0.02
    """
    return u2 + rho2 * (theta - z)


def admm_iteration(
    state: ADMMState,
    loss_grad_theta: tf.Tensor,
    resource: Resource,
    budgets: tf.Tensor,
    *,
    theta_learning_rate: float = THETA_LEARNING_RATE,
    loss_scale: float | None = None,
    loss_weight: float = LOSS_WEIGHT,
    z_steps_per_iteration: int = Z_STEPS,
    z_learning_rate: float = Z_LEARNING_RATE,
    rho1: float = RHO1,
    rho2: float = RHO2,
    floor: float | tf.Tensor | None = None,
) -> ADMMState:
    """One outer iteration: theta step, inner z steps, then the u2 dual update.

    Args:
        state: current state.
        loss_grad_theta: [K] ``dL_v/dtheta`` from one validation batch.
        resource: the resource function (``a -> [M]``, e.g. :func:`quadratic_resource`).
        budgets: [M] budget fractions.
        theta_learning_rate: Adam learning rate of theta.
        loss_scale: fixed loss scale (paper: 1e5), or None for the adaptive scale.
        loss_weight: target RMS of the scaled loss gradient when adaptive.
        z_steps_per_iteration: inner z steps (paper: 50).
        z_learning_rate: z step per coordinate (paper: 1e-3).
        rho1: budget penalty.
        rho2: penalty of ``theta == z``.
        floor: a lower bound on theta and z (a logit, scalar or [K]): both are projected
            onto it after their steps (a box constraint on the keep ratios), or None.

    Returns:
        The new state.

    Example:
        >>> resource = quadratic_resource(tf.constant([[[0.0, 0.5], [0.5, 0.0]]]),
        ...                               tf.zeros([1, 2]), tf.zeros([1]))
        >>> state = admm_iteration(init_state(2, 1), tf.zeros([2]), resource,
        ...                        tf.constant([0.5]))
        >>> float(state.step), bool(tf.reduce_all(state.z < 5.0))
        (1.0, True)
    """
    state = theta_step(
        state,
        loss_grad_theta,
        learning_rate=theta_learning_rate,
        rho2=rho2,
        loss_scale=loss_scale,
        loss_weight=loss_weight,
    )
    if floor is not None:
        state = state._replace(theta=tf.maximum(state.theta, floor))
    z, u1 = z_steps(
        state.theta,
        state.z,
        state.u1,
        state.u2,
        resource,
        budgets,
        steps=z_steps_per_iteration,
        learning_rate=z_learning_rate,
        rho1=rho1,
        rho2=rho2,
    )
    if floor is not None:
        z = tf.maximum(z, floor)
    u2 = dual_update(state.u2, state.theta, z, rho2=rho2)
    return state._replace(z=z, u1=u1, u2=u2)
