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
    """Tests marked ``keras3_only`` exercise code that does not depend on the Keras flavour
    beyond what the other tests cover in both; they are skipped under tf_keras, to keep
    ``make test`` within its time budget."""
    if not _keras.default_keras().__name__.startswith("tf_keras"):
        return
    skip = pytest.mark.skip(reason="flavour-independent; runs under Keras 3")
    for item in items:
        if "keras3_only" in item.keywords:
            item.add_marker(skip)
