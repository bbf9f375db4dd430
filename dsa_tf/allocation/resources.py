"""ResourceModel: what a budget constrains, evaluated for one model, the same way everywhere.

FLOPs and params are the plan's exact quadratic forms of the keep ratios
(:mod:`dsa_tf.structure.quadratic`); latency is the prediction of a measured table
(:class:`dsa_tf.deploy.latency_model.LatencyModel`, in milliseconds). Budget validation, the
baseline allocators, DSA's ADMM (through :meth:`ResourceModel.function`), its freeze check,
``strip``'s budget check and the allocation report all evaluate resources through one
``ResourceModel``, so they agree: values at integer channel counts are exact (FLOPs and params
as counted on the stripped model, latency as the table predicts it), and the function of the
keep ratios is differentiable for the ADMM.

Example:
    >>> import numpy as np, dsa_tf
    >>> resources = ResourceModel(dsa_tf.analyze(dsa_tf.models.cifar_resnet(20)))
    >>> resources.fractions(np.full(12, 0.5), ["flops", "params"])["flops"] < 0.3
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf.allocation import admm
from dsa_tf.deploy.latency_model import LatencyModel
from dsa_tf.deploy.latency_table import LatencyTable
from dsa_tf.deploy.profile import cache_dir, cached_table
from dsa_tf.structure.graph import ChannelPlan

RESOURCES = ("flops", "params", "latency")
UNITS = {"flops": "FLOPs", "params": "params", "latency": "ms"}


class ResourceModel:
    """The resources of ``plan``'s model as functions of its prunable groups' keep ratios.

    Args:
        plan: the model's channel plan.
        latency_table: the path of a latency table covering the model (needed only to
            evaluate "latency"; see :func:`dsa_tf.deploy.profile.cached_table`).
    """

    def __init__(self, plan: ChannelPlan, latency_table: str | None = None):
        self.plan = plan
        self.latency_table = latency_table
        self._latency: LatencyModel | None = None
        self._full: dict[str, float] = {}

    @property
    def latency(self) -> LatencyModel:
        """The latency model (loaded from ``latency_table`` on first use).

        Raises:
            ValueError: no table, or one that does not cover the model.
        """
        if self._latency is None:
            if self.latency_table is None:
                raise ValueError("A latency budget needs a latency table; pass latency_table= "
                                 "(a path from `dsa-tf profile`) or let prune_to_budget "
                                 "measure one.")
            self._latency = LatencyModel(self.plan, LatencyTable.load(self.latency_table))
            if not self._latency.calibrated:
                warnings.warn(
                    f"The latency table {self.latency_table} has no calibration for this model: "
                    f"predicted latency is the sum of its operators' times, without what the "
                    f"whole model adds. Profile this model on the device (dsa-tf profile) for "
                    f"calibrated predictions.", stacklevel=3)
        return self._latency

    def full(self, name: str) -> float:
        """The full model's value: FLOPs or params (integers), or latency in ms (evaluated
        once per resource: allocators divide by it at every step of their searches)."""
        if name not in self._full:
            self._full[name] = self.value(name, np.ones(len(self.plan.prunable)))
        return self._full[name]

    def value(self, name: str, keep_ratios: np.ndarray) -> float:
        """The resource at the given keep ratios (one per prunable group, in plan order)."""
        if name == "latency":
            return self.latency.predict(np.asarray(keep_ratios, dtype=np.float64))
        return float(round(getattr(self.plan, name)(np.asarray(keep_ratios, np.float64))))

    def fractions(self, keep_ratios: np.ndarray, names: Iterable[str]) -> dict[str, float]:
        """Each resource at the keep ratios, as a fraction of the full model's."""
        return {name: self.value(name, keep_ratios) / self.full(name) for name in names}

    def function(self, names: list[str], order: Iterable[int] | None = None
                 ) -> Callable[[tf.Tensor], tf.Tensor]:
        """A differentiable TensorFlow function from keep ratios [K] to the fractions [M] of
        ``names`` (what :mod:`dsa_tf.allocation.admm` takes).

        Args:
            names: the resources, in the order of the result.
            order: the plan group of each keep ratio the function receives (default: plan
                order), e.g. the order of a gated model's gates.
        """
        K = len(self.plan.prunable)
        order = np.arange(K) if order is None else np.asarray(list(order))
        # a permutation matrix rather than a gather, whose sparse gradient TensorFlow warns
        # about converting to a dense one inside the ADMM's jacobians
        to_plan = tf.constant(np.eye(K)[np.argsort(order)], tf.float32)
        parts = []
        for name in names:
            full = self.full(name)
            if name == "latency":
                predict = self.latency.tf_predict
                parts.append(lambda a, predict=predict, full=full: predict(a) / full)
            else:
                form = getattr(self.plan, name)
                quadratic = admm.quadratic_resource(*(
                    tf.constant([value / full], tf.float32) for value in (form.A, form.b, form.c)))
                parts.append(lambda a, quadratic=quadratic: quadratic(a)[0])

        def resource(keep_ratios: tf.Tensor) -> tf.Tensor:
            plan_ratios = tf.linalg.matvec(to_plan, tf.cast(keep_ratios, tf.float32))
            return tf.stack([part(plan_ratios) for part in parts])

        return resource

    def shares(self, name: str) -> np.ndarray:
        """Each group's share of the full model's resource (plan order): the cost of every
        operator split between the groups that prune it, half to its input side and half to
        its output side when both are pruned, over the full resource. The shares of all
        groups and of what no group prunes add up to 1."""
        if name == "latency":
            return self.latency.shares() / self.full(name)
        form = getattr(self.plan, name)
        ones = np.ones(len(form.b))
        return ((form.A + form.A.T) @ ones / 2 + form.b) / form(ones)


def latency_table_path(model: Any, latency_table: str | os.PathLike | LatencyTable | None,
                       exclude: Iterable[str] = ()) -> str:
    """The path of the latency table a latency budget uses: ``latency_table`` as given (a
    path, checked to load), a :class:`LatencyTable` saved into the cache, or without one a
    table of ``model`` measured on this device (cached; see
    :func:`dsa_tf.deploy.profile.cached_table`). Gated models record this path.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a latency table.
        TypeError: anything else as ``latency_table``.
    """
    if latency_table is None:
        return cached_table(model, exclude=exclude)
    if isinstance(latency_table, LatencyTable):
        content = json.dumps(latency_table.__dict__, sort_keys=True)
        path = os.path.join(cache_dir(), "tables",
                            hashlib.sha1(content.encode()).hexdigest()[:16] + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        latency_table.save(path)
        return path
    if not isinstance(latency_table, (str, os.PathLike)):
        raise TypeError(f"latency_table must be a path, a LatencyTable or None, got "
                        f"{type(latency_table).__name__}.")
    path = os.path.abspath(os.fspath(latency_table))
    if not os.path.exists(path):
        raise FileNotFoundError(f"No latency table at {path} (make one with dsa-tf profile).")
    LatencyTable.load(path)
    return path
