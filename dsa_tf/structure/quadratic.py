"""Quadratic forms F(a) = a^T A a + b^T a + c over the keep ratios of the prunable groups.

The resource model of DSA: a layer's FLOPs or parameter count is a product of at most two
channel counts (its kept input and output channels), and a kept channel count is linear in
the keep ratios. The layer rules compute costs with plain integers (to count a model) or with
these forms (to build the model of the cost); the arithmetic is the same.

Example:
    >>> import numpy as np
    >>> n_in = Quadratic.linear(np.array([16.0, 0.0]), 0.0)   # group 0 has 16 channels
    >>> n_out = Quadratic.linear(np.array([0.0, 32.0]), 0.0)  # group 1 has 32
    >>> flops = 2 * 9 * n_in * n_out                          # a 3x3 conv, one pixel
    >>> float(flops(np.array([0.5, 0.25])))
    1152.0
"""

from __future__ import annotations

import numpy as np


class Quadratic:
    """F(a) = a^T A a + b^T a + c, with A of shape [K, K] and b of shape [K]."""

    def __init__(self, A: np.ndarray, b: np.ndarray, c: float):
        self.A = np.asarray(A, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.c = float(c)

    @classmethod
    def zero(cls, num_groups: int) -> Quadratic:
        """The zero form over ``num_groups`` variables."""
        return cls(np.zeros((num_groups, num_groups)), np.zeros(num_groups), 0.0)

    @classmethod
    def linear(cls, b: np.ndarray, c: float) -> Quadratic:
        """The affine form b^T a + c."""
        b = np.asarray(b, dtype=np.float64)
        return cls(np.zeros((len(b), len(b))), b, c)

    @property
    def is_affine(self) -> bool:
        return not self.A.any()

    def __add__(self, other: Quadratic | float) -> Quadratic:
        if isinstance(other, Quadratic):
            return Quadratic(self.A + other.A, self.b + other.b, self.c + other.c)
        return Quadratic(self.A, self.b, self.c + float(other))

    __radd__ = __add__

    def __mul__(self, other: Quadratic | float) -> Quadratic:
        if isinstance(other, Quadratic):
            if not (self.is_affine and other.is_affine):
                raise ValueError("The product of two forms must stay quadratic.")
            return Quadratic(
                np.outer(self.b, other.b),
                self.b * other.c + other.b * self.c,
                self.c * other.c,
            )
        k = float(other)
        return Quadratic(self.A * k, self.b * k, self.c * k)

    __rmul__ = __mul__

    def __call__(self, keep_ratios: np.ndarray) -> float:
        """Evaluates F at the given keep ratios (one per prunable group)."""
        a = np.asarray(keep_ratios, dtype=np.float64)
        return float(a @ self.A @ a + self.b @ a + self.c)

    def __repr__(self) -> str:
        return f"Quadratic(num_groups={len(self.b)}, F(1)={self(np.ones(len(self.b))):.6g})"
