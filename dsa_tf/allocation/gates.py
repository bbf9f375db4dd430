"""The ChannelGate layer: one per channel group, applying DSA's masks wherever they must reach.

A gate owns its group's state (all non-trainable Keras variables, so that the weight optimiser
leaves them alone, traced train functions see every change, and checkpoints carry them):

* ``theta``: the keep-ratio logit, keep ratio a = sigmoid(theta) (DSA's Theta, init 5.0);
* ``importance``: the base importance b of each channel (|gamma| of the group's BatchNorms, or
  the filters' L1 norm without BN), refreshed by :class:`dsa_tf.DSACallback`;
* ``beta2``: the steepness of the keep probabilities;
* ``step``: a counter that seeds the Bernoulli noise of each new sample;
* ``mask``: the mask every call point applies in training: all ones during warm-up, the step's
  Bernoulli sample during allocation (drawn once per step for the whole group by
  :func:`dsa_tf.allocation.gated_model.resample_masks`), the frozen mask after the allocation;
* ``mode``: 0 open (warm-up), 1 stochastic (allocation), 2 frozen (the allocation ended:
  ``mask`` is used in training and inference);
* ``frozen_by``: 0 while not frozen, 1 when the allocation met the budget, 2 when
  :class:`dsa_tf.DSACallback` completed an allocation that had not met it in time, 3 when
  :func:`dsa_tf.apply_allocation` froze a given allocation;
* the group's ADMM state (``z``, ``u2``, ``adam_m``, ``adam_v``) and, identical in every gate
  of a model, the shared part (``u1`` per constraint, ``loss_grad_sq``, ``admm_step``): see
  :mod:`dsa_tf.allocation.admm`. :class:`dsa_tf.DSACallback` reads and writes them.

Under a ``tf.distribute`` strategy (a gate made in ``strategy.scope()``) these variables are
mirrored with the default settings (written on every replica, no aggregation). That is enough
because they are written only between weight steps, in cross-replica context, where one
write sets every replica's copy; the train step only reads them. A write inside a replica's
step would change only that replica's copy, so nothing may write them there.

In inference (``training=False``) the gate keeps the top-k channels by importance,
k = max(min_channels, round(a * C)) (a multiple of ``round_to`` or C when ``round_to > 1``, see
:func:`dsa_tf.allocation.keep_process.kept_count`), or the frozen mask once frozen: exactly what
:func:`dsa_tf.strip` removes.

The same gate layer is called at every point of its group where a dropped channel could come
back (after each convolution, BatchNorm, bias or shifting activation). At a point whose channel
axis mixes several groups (after a Concatenate), the call names the ``positions`` of the axis
that belong to the gate's group and their channel ``index``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from dsa_tf._keras import per_flavour
from dsa_tf.allocation import keep_process

OPEN, STOCHASTIC, FROZEN = 0, 1, 2
PHASE_NAMES = {OPEN: "warm-up", STOCHASTIC: "allocation", FROZEN: "fine-tuning"}
# frozen_by: the budget met by the ADMM, completed by DSACallback, or a given allocation
BY_ALLOCATION, BY_COMPLETION, BY_ASSIGNMENT = 1, 2, 3


def make_gate_class(keras: Any) -> type:
    """The ChannelGate layer class for one Keras flavour (``keras`` or ``tf_keras``)."""

    @keras.utils.register_keras_serializable(package="dsa_tf", name="ChannelGate")
    class ChannelGate(keras.layers.Layer):
        """Stochastic channel gate of one DSA channel group.

        Args:
            group: the name of the channel group (see :func:`dsa_tf.analyze`).
            channels: the group's channel count C.
            min_channels: the fewest channels the hard mask keeps.
            round_to: the hard mask keeps a multiple of this many channels, or all of them.
            blocks: the group's :attr:`~dsa_tf.structure.graph.Group.blocks` (a grouped
                convolution's groups): every block keeps the same number of channels, in the
                hard mask and, on average, in the sampled masks (the keep probabilities have
                mean a in every block). ``round_to`` must be a multiple of it.
            seed: seed of the Bernoulli noise.
            theta_init: initial keep-ratio logit (DSA: 5.0, keep ratio about 0.993).
            importance_sources: names of the layers whose weights give the base importance.
            budget: the gated model's budget as fractions, e.g. ``{"flops": 0.5}`` (the same
                in every gate, recorded so that a saved gated model keeps it).
            exclude: the layer names excluded from pruning when the model was gated.
            latency_table: the path of the latency table a latency budget is measured with
                (:func:`dsa_tf.allocation.resources.latency_table_path`), else None.

        Example:
            >>> import numpy as np, tensorflow as tf
            >>> gate = ChannelGate(group="conv", channels=4)
            >>> x = np.ones((1, 2, 2, 4), "float32")
            >>> float(tf.reduce_sum(gate(x, training=False)))  # a ~ 0.993 keeps 4 of 4
            16.0
        """

        # A channel mask layer (dsa_tf.structure.rules.is_mask_layer): the structure passes
        # its channels through and strip leaves it out.
        channel_mask = True

        def __init__(self, group: str, channels: int, min_channels: int = 1, round_to: int = 1,
                     blocks: int = 1, seed: int = 0, theta_init: float = 5.0,
                     importance_sources: tuple = (),
                     budget: dict | None = None, exclude: tuple = (),
                     latency_table: str | None = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.group = group
            self.channels = int(channels)
            self.min_channels = int(min_channels)
            self.round_to = int(round_to)
            self.blocks = int(blocks)
            if self.channels % self.blocks or self.round_to % self.blocks:
                raise ValueError(
                    f"Gate of {group!r}: blocks={self.blocks} must divide its {self.channels} "
                    f"channels and round_to={self.round_to}.")
            self.seed = int(seed)
            self.theta_init = float(theta_init)
            self.importance_sources = list(importance_sources)
            self.budget = dict(budget or {})
            self.exclude = list(exclude)
            self.latency_table = latency_table
            # True only while a keep-ratio gradient is traced with moving BatchNorm statistics
            # (dsa_tf.allocation.gated_model.sampled_masks): inference calls then apply the
            # sampled mask too. A Python flag read when a call is traced, never saved.
            self.sampled_in_inference = False
            # beta2 in units of the spread of the log importances (keep_probabilities'
            # ``relative``); set by DSACallback(beta2_relative=...) when fit begins.
            self.relative_steepness = False
            self.theta = self.add_weight(name="theta", shape=(), trainable=False,
                                         initializer=keras.initializers.Constant(theta_init))
            self.importance = self.add_weight(name="importance", shape=(self.channels,),
                                              trainable=False, initializer="ones")
            self.beta2 = self.add_weight(name="beta2", shape=(), trainable=False,
                                         initializer=keras.initializers.Constant(0.05))
            self.step = self.add_weight(name="step", shape=(), trainable=False, dtype="int64",
                                        initializer="zeros")
            self.mode = self.add_weight(name="mode", shape=(), trainable=False, dtype="int64",
                                        initializer="zeros")
            self.mask = self.add_weight(name="mask", shape=(self.channels,), trainable=False,
                                        initializer="ones")
            constant = keras.initializers.Constant
            for name, init in (("z", constant(theta_init)), ("u2", "zeros"),
                               ("adam_m", "zeros"), ("adam_v", "zeros"),
                               ("loss_grad_sq", "zeros"), ("admm_step", "zeros")):
                setattr(self, name, self.add_weight(name=name, shape=(), trainable=False,
                                                    initializer=init))
            self.u1 = self.add_weight(name="u1", shape=(max(1, len(self.budget)),),
                                      trainable=False, initializer="zeros")
            self.frozen_by = self.add_weight(name="frozen_by", shape=(), trainable=False,
                                             dtype="int64", initializer="zeros")

        def load_own_variables(self, store: Any) -> None:
            """Loads a saved gate. Gates saved before ``frozen_by`` existed lack it: a frozen
            one then counts as frozen by the allocation."""
            variables = list(self.weights)
            if not len(variables) - 1 <= len(store.keys()) <= len(variables):
                raise ValueError(f"Gate {self.name!r} expected {len(variables)} variables, the "
                                 f"file holds {len(store.keys())}.")
            for i, variable in enumerate(variables[:len(store.keys())]):
                variable.assign(store[f"{i}"])
            if len(store.keys()) < len(variables):
                frozen = int(tf.convert_to_tensor(self.mode)) == FROZEN
                self.frozen_by.assign(BY_ALLOCATION if frozen else 0)

        def keep_ratio(self) -> tf.Tensor:
            """The current keep ratio a = sigmoid(theta)."""
            return tf.sigmoid(tf.convert_to_tensor(self.theta))

        def kept_count(self) -> tf.Tensor:
            """k, the number of channels the hard mask keeps at the current keep ratio."""
            return keep_process.kept_count(self.keep_ratio(), self.channels, self.min_channels,
                                           self.round_to)

        def top_k_mask(self) -> tf.Tensor:
            """The k most important channels, k = :meth:`kept_count`."""
            importance = tf.convert_to_tensor(self.importance)
            return keep_process.hard_mask(importance, self.keep_ratio(), self.min_channels,
                                          self.round_to, self.blocks)

        def hard_mask(self) -> tf.Tensor:
            """The inference mask: the frozen mask once frozen, else :meth:`top_k_mask`."""
            return tf.cond(tf.equal(tf.convert_to_tensor(self.mode), FROZEN),
                           lambda: tf.convert_to_tensor(self.mask), self.top_k_mask)

        def probabilities(self, keep_ratio: tf.Tensor | None = None) -> tf.Tensor:
            """DSA's keep probabilities at the current keep ratio (or at ``keep_ratio``),
            differentiable in theta (implicit gradient); with blocks, mean a in every block."""
            importance = tf.reshape(tf.convert_to_tensor(self.importance), [self.blocks, -1])
            ratio = self.keep_ratio() if keep_ratio is None else keep_ratio
            return tf.reshape(keep_process.keep_probabilities(
                importance, ratio, tf.convert_to_tensor(self.beta2),
                relative=self.relative_steepness), [self.channels])

        def sample(self, keep_ratio: tf.Tensor | None = None) -> tf.Tensor:
            """A Bernoulli mask drawn from :meth:`probabilities` with noise seeded by ``step``:
            the same noise at every ``keep_ratio``, so a higher ratio keeps a superset."""
            noise = tf.random.stateless_uniform(
                [self.channels], seed=tf.stack([tf.constant(self.seed, tf.int64),
                                                tf.convert_to_tensor(self.step)]))
            return keep_process.sample_mask(self.probabilities(keep_ratio), noise)

        def call(self, inputs: Any, positions: list | None = None, index: list | None = None,
                 training: bool | None = None, mask_only: bool = False) -> Any:
            """``inputs`` times the mask (the sampled mask in training, the hard mask in
            inference) on the channel positions ``positions`` of the group's channels
            ``index`` (default: all, in order); with ``mask_only``, the mask itself broadcast
            to the shape of ``inputs`` (1 at other positions), what a masked normalisation
            (:mod:`dsa_tf.allocation.masked_norm`) takes."""
            sampled = training or self.sampled_in_inference
            mask = tf.convert_to_tensor(self.mask) if sampled else self.hard_mask()
            mask = tf.cast(mask, inputs.dtype)
            if positions is not None:
                width = inputs.shape[-1]
                full = tf.tensor_scatter_nd_update(
                    tf.ones([width], inputs.dtype), tf.constant(positions)[:, None],
                    tf.gather(mask, index))
                mask = full
            return tf.ones_like(inputs) * mask if mask_only else inputs * mask

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

        def get_config(self) -> dict:
            return {**super().get_config(), "group": self.group, "channels": self.channels,
                    "min_channels": self.min_channels, "round_to": self.round_to,
                    "blocks": self.blocks, "seed": self.seed,
                    "theta_init": self.theta_init,
                    "importance_sources": list(self.importance_sources),
                    "budget": dict(self.budget), "exclude": list(self.exclude),
                    "latency_table": self.latency_table}

    return ChannelGate


gate_class = per_flavour(make_gate_class)
gate_class.__doc__ = """The ChannelGate class for ``keras`` (default: ``tf.keras``)."""


def is_gate(layer: Any) -> bool:
    """True for a ChannelGate of either Keras flavour."""
    return any(isinstance(layer, cls) for cls in gate_class.classes.values())
