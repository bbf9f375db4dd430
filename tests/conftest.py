"""Shared fixtures. The suite runs under Keras 3 and, with TF_USE_LEGACY_KERAS=1, tf_keras."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_state  # noqa: E402
import pytest  # noqa: E402

from dsa_tf import _keras  # noqa: E402


@pytest.fixture
def keras():
    """The Keras that tf.keras resolves to in this run, its global state reset."""
    module = _keras.default_keras()
    keras_state.reset(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Tests marked ``keras3_only`` or ``tf_keras_only`` exercise code that does not depend on
    the Keras flavour beyond what the other tests cover in both; each runs in one flavour
    only, to keep ``make test`` (both flavours side by side) within its time budget. The
    slow ones are split so that the two flavours take about as long."""
    legacy = _keras.default_keras().__name__.startswith("tf_keras")
    other, runs_under = ("keras3_only", "Keras 3") if legacy else ("tf_keras_only", "tf_keras")
    skip = pytest.mark.skip(reason=f"flavour-independent; runs under {runs_under}")
    for item in items:
        if other in item.keywords:
            item.add_marker(skip)
